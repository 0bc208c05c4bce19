//! Layered configuration: built-in defaults → `triad.toml` → `TRIAD_*` environment → CLI.
//!
//! Keys nest with `__` in the environment (`TRIAD_KAFKA__BOOTSTRAP_SERVERS`) and with `.` on
//! the command line (`--set kafka.bootstrap_servers=...`). Unknown keys are an error at every
//! layer, and values are validated at start-up with messages naming the key. Secrets are
//! never part of this structure: they come from the environment or files by name, so
//! printing the configuration cannot leak them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The environment variable naming the configuration file (not itself a config key).
pub const CONFIG_FILE_ENV: &str = "TRIAD_CONFIG";
/// The file read when present in the working directory and no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "triad.toml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration file {path}: not found")]
    MissingFile { path: PathBuf },
    #[error("configuration: {0}")]
    Figment(Box<figment::Error>),
    #[error("configuration key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("--set {0}: expected key=value")]
    BadOverride(String),
}

impl From<figment::Error> for Error {
    fn from(e: figment::Error) -> Self {
        Self::Figment(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub postgres: PostgresConfig,
    pub blobs: BlobsConfig,
    pub projection: ProjectionConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub codec: CodecConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub processor: ProcessorConfig,
    pub executor: ExecutorConfig,
    pub sovereignty: SovereigntyConfig,
    pub credits: CreditsConfig,
    /// The model catalogue, by model id. Defaults to the embedded `triad-local` model;
    /// providers whose key variables are set (`AETHERAI_URL`, `GROK_API_KEY`,
    /// `KIMI_API_KEY`, `CLAUDE_API_KEY`) are added by `triad-models` at start-up.
    pub models: BTreeMap<String, ModelConfig>,
}

/// The sovereignty policy (the sovereignty issue makes it event-sourced and versioned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub zones: Vec<String>,
    /// Named groups of zones, e.g. `CONUS`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// The hosts model endpoints may have, per zone: a remote model is used only when its
    /// `base_url` host is listed for each of its zones that has a list. A zone without an
    /// entry allows any host (list one per zone in production).
    pub hosts: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// A dispatched task whose zone has shown no live executor for this long is moved to
    /// another allowed zone (or fails when there is none).
    pub unclaimed_after_ms: u64,
    /// An executor is alive while its last heartbeat is younger than this.
    pub liveness_ms: u64,
    /// Added to a task's timeout before the processor's deadline timer fires, so the
    /// executor's own timeout normally reports first.
    pub deadline_grace_ms: u64,
    /// A partition's changed workflows are snapshotted after this many inputs with events
    /// (0 = never: recovery then folds the whole event-store partition).
    pub snapshot_every: u64,
    /// A workflow state larger than this is not snapshotted (and no checkpoint is written
    /// while it is pending), so a snapshot record stays below the broker's message limit.
    pub snapshot_max_bytes: usize,
    /// How often a workflow still waiting for the credits ledger's answer (a reservation or
    /// a settlement) sends its command again; the ledger answers a repeat with its first
    /// answer.
    pub ledger_retry_ms: u64,
}

/// TRIAD credits (docs/credits.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreditsConfig {
    /// Reject submissions that name no credits account. Off by default, so the demo and
    /// single-user setups run without a ledger; a submission that names an account always
    /// runs on a reservation.
    pub require_account: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Task requests worked on at once per executor; partitions pause when full.
    pub max_in_flight: usize,
    pub heartbeat_ms: u64,
    /// Calls to one model per attempt before falling back to the next model.
    pub retries_per_model: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Circuit breaker: open after this many failures within `breaker_window_ms`...
    pub breaker_failures: u32,
    pub breaker_window_ms: u64,
    /// ...and let one probe through after this cool-down.
    pub breaker_cooldown_ms: u64,
    /// Auctions (tasks with `auction`): how long bidders have to answer; later bids are
    /// recorded as LATE.
    pub bid_timeout_ms: u64,
    /// Auctions: bids below this confidence do not qualify.
    pub bid_confidence_floor: f64,
    /// How often each model's `health()` is probed.
    pub health_every_ms: u64,
    /// Failed probes in a row that mark a model unhealthy (the router skips it)...
    pub unhealthy_after: u32,
    /// ...and good probes in a row that mark it healthy again.
    pub healthy_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// The embedded model: no key, no network.
    Local,
    /// OpenAI-compatible chat completions (vLLM, xAI, Moonshot).
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
    /// A WebAssembly component of the `triad:adapter` world (`component`; without it, the
    /// embedded `triad-local` component), run sandboxed in the executor.
    Wasm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Base URL of the provider's API (`…/v1/chat/completions` or `…/v1/messages` is appended).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The provider's model name; defaults to the model id.
    #[serde(default)]
    pub model: Option<String>,
    /// The name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Where the model processes data. Empty for `local`: it runs in the executor's zone.
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub specialties: Vec<String>,
    /// Price in millionths of a credit per 1K input / output tokens.
    #[serde(default)]
    pub input_micros_per_1k: i64,
    #[serde(default)]
    pub output_micros_per_1k: i64,
    #[serde(default = "default_latency")]
    pub latency_p50_ms: u64,
    #[serde(default = "default_latency")]
    pub latency_p95_ms: u64,
    #[serde(default = "default_latency")]
    pub latency_p99_ms: u64,
    #[serde(default = "default_context")]
    pub max_context: u32,
    /// Per-call HTTP timeout.
    #[serde(default = "default_call_timeout")]
    pub timeout_ms: u64,
    /// `wasm`: the component file. Absent: the embedded `triad-local` component.
    #[serde(default)]
    pub component: Option<String>,
    /// `wasm`: the hosts the component may call through the host's egress (exact names).
    /// Empty: no egress, and the model runs in the executor's zone like `local`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// `local`, `openai`, `anthropic`: take part in auctions, bidding the declared price of the
    /// task and the declared p50 with this confidence (0–1). Unset: no bids. (A `wasm`
    /// component bids through its own `bid` export.)
    #[serde(default)]
    pub bid_confidence: Option<f64>,
}

fn default_latency() -> u64 {
    1000
}

fn default_context() -> u32 {
    8192
}

fn default_call_timeout() -> u64 {
    60_000
}

impl ModelConfig {
    /// The embedded model's entry.
    /// The default `triad-local`: the embedded component (`adapters/local`), sandboxed in
    /// wasmtime. Its fingerprint is the component's own `capabilities`.
    pub fn embedded() -> Self {
        Self {
            kind: ModelKind::Wasm,
            specialties: vec![],
            ..Self::local()
        }
    }

    /// The same model run as native code (`kind = "local"`).
    pub fn local() -> Self {
        Self {
            kind: ModelKind::Local,
            base_url: None,
            model: None,
            api_key_env: None,
            zones: vec![],
            specialties: ["arithmetic", "echo", "questions", "text"]
                .map(String::from)
                .to_vec(),
            input_micros_per_1k: 0,
            output_micros_per_1k: 0,
            latency_p50_ms: 1,
            latency_p95_ms: 2,
            latency_p99_ms: 5,
            max_context: 65_536,
            timeout_ms: 5_000,
            component: None,
            allowed_hosts: vec![],
            bid_confidence: None,
        }
    }

    /// True for models that run inside the executor and send data nowhere (their zone is
    /// the executor's): `local`, and `wasm` without egress.
    pub fn in_executor(&self) -> bool {
        match self.kind {
            ModelKind::Local => true,
            ModelKind::Wasm => self.allowed_hosts.is_empty(),
            ModelKind::Openai | ModelKind::Anthropic => false,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            zones: ["US-EAST", "US-WEST", "US-CENTRAL", "EU-WEST"]
                .map(String::from)
                .to_vec(),
            groups: BTreeMap::from([(
                "CONUS".to_owned(),
                ["US-EAST", "US-WEST", "US-CENTRAL"]
                    .map(String::from)
                    .to_vec(),
            )]),
            hosts: BTreeMap::new(),
        }
    }
}

/// The host of a `base_url` (`scheme://host[:port]/…`), lower-case.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            unclaimed_after_ms: 10_000,
            liveness_ms: 10_000,
            deadline_grace_ms: 5_000,
            snapshot_every: 500,
            snapshot_max_bytes: 768 * 1024,
            ledger_retry_ms: 5_000,
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            heartbeat_ms: 2_000,
            retries_per_model: 3,
            retry_base_ms: 100,
            retry_max_ms: 5_000,
            breaker_failures: 3,
            breaker_window_ms: 60_000,
            breaker_cooldown_ms: 30_000,
            bid_timeout_ms: 250,
            bid_confidence_floor: 0.5,
            health_every_ms: 30_000,
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    pub client_id: String,
    /// Partitions of the per-workflow topics (inbox, event store). Never changed under a live
    /// topic: the partition of a workflow is murmur2(key) mod this number.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group of the dead-letter tooling and the demo reader.
    pub group_prefix: String,
    /// Prepended to every TRIAD topic name (not `_schemas`), so several installations or
    /// test runs can share one cluster.
    pub topic_prefix: String,
    /// How long a fetch may wait at the broker for data. Every hop of a task waits for it
    /// when a partition is idle, and Tansu 0.6 holds an empty fetch for the whole time
    /// instead of answering when data arrives, so the default is low (librdkafka's is 500).
    pub fetch_wait_max_ms: u32,
    /// The same for the background followers off a task's critical path (executor status
    /// for the processor, cancellations for executors). On Tansu's sqlite storage every
    /// empty fetch costs the broker real CPU (~1.4 ms), so each consumer polling every
    /// 10 ms takes about a third of a core; these can afford to wait longer.
    pub background_fetch_wait_max_ms: u32,
    /// Join consumer groups with a static `group.instance.id` (`<group>-<instance>`), so a
    /// restarted worker takes its partitions back at once (ADR 0007). Off for a worker that
    /// should leave its group for good when it stops.
    pub static_membership: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Where clients reach a Confluent-compatible schema registry.
    pub url: String,
    /// Where `triad registry` listens.
    pub listen: SocketAddr,
    /// The compacted topic holding the registry's state.
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq-style URL without a password; the password comes from `PGPASSWORD` or a
    /// `.pgpass` file, never from this file.
    pub url: String,
    /// Connections per process (the pool connects lazily).
    pub pool_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobsConfig {
    /// A task output above this size travels by reference (claim check): the content goes
    /// to the blob store in PostgreSQL, the record carries its SHA-256 and size.
    pub inline_max_bytes: usize,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self {
            inline_max_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where `triad api` (and `triad dev`) serve REST/SSE.
    pub listen: SocketAddr,
    /// Larger request bodies are refused with 413 before they are parsed.
    pub max_body_bytes: usize,
    /// Bearer JWTs from an identity provider (docs/access.md); without this section only
    /// API keys authenticate.
    pub jwt: Option<JwtConfig>,
    /// Per-tenant limits (docs/access.md "Limits").
    pub limits: LimitsConfig,
    /// Production mode for GraphQL: a JSON file `{"name": "query text", …}` of the only
    /// operations this node executes (sent whole, or by `extensions.persistedQuery.sha256Hash`).
    pub trusted_operations_file: Option<PathBuf>,
}

/// Per-tenant limits at the API; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained requests per second per tenant (every authenticated request, a WebSocket
    /// connection counting as one).
    pub requests_per_second: u32,
    /// Requests a tenant may send at once above the sustained rate.
    pub burst: u32,
    /// Workflows of a tenant accepted or running at once; submissions beyond answer 429.
    pub max_active_workflows: u32,
    /// Unfinished tasks of a tenant's active workflows; a submission that would exceed it
    /// answers 429.
    pub max_tasks_in_flight: u32,
    /// A request over its tenant's rate is answered (429) this much later: a client that
    /// sends its next request on the answer is slowed to one request per hold per
    /// connection instead of looping on cheap refusals. 0 answers at once.
    pub refusal_hold_ms: u32,
    /// Refusals held at once on this node; beyond it they are answered at once (a hold costs
    /// a connection and a timer, so this bounds what a flood can park here).
    pub max_held_refusals: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 100,
            burst: 200,
            max_active_workflows: 500,
            max_tasks_in_flight: 5_000,
            refusal_hold_ms: 1_000,
            max_held_refusals: 1_024,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            jwt: None,
            limits: LimitsConfig::default(),
            trusted_operations_file: None,
        }
    }
}

/// How the API checks bearer JWTs (RFC 8725 practice; `triad-auth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The identity provider's public keys (a JWKS document); every key needs a `kid`.
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Allowed signature algorithms; asymmetric only (HMAC is refused).
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_jwt_leeway")]
    pub leeway_s: u64,
    /// The claim naming the caller's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim naming the caller's role (`member` when absent).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".to_owned(), "ES256".to_owned()]
}

fn default_jwt_leeway() -> u64 {
    30
}

fn default_tenant_claim() -> String {
    "triad_tenant".to_owned()
}

fn default_role_claim() -> String {
    "triad_role".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionConfig {
    /// The PostgreSQL schema of the live read models (`triad replay` builds
    /// `<schema>_shadow` and swaps it in).
    pub schema: String,
    /// A batch (one transaction) closes at this many records...
    pub batch_max_records: usize,
    /// ...or this long after its first record arrived, whichever comes first.
    pub flush_interval_ms: u64,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            schema: "triad_read".to_owned(),
            batch_max_records: 500,
            flush_interval_ms: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodecConfig {
    /// Largest single allocation apache-avro may make while decoding one record.
    pub max_allocation_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON for services, human-readable for one-shot CLI commands.
    Auto,
    Json,
    Pretty,
}

/// Node keys and the key directory (`docs/sovereignty_kernel.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SovereigntyConfig {
    /// The `file` key store: node keys live here, one `<node id>.key` file each (0600).
    pub key_dir: PathBuf,
    /// The operator key that signs the key directory: its public key, hex (uncompressed
    /// SEC1, 130 characters). Readers refuse directory changes it did not sign. Unset: the
    /// directory cannot be read.
    pub operator_public_key: Option<String>,
    /// Seal payloads: the edge seals prompts into zone-bound envelopes, executors open them
    /// inside the zone and seal outputs, readers outside the zones see ciphertext only.
    /// Needs `operator_public_key` and this node's key enrolled in its zone.
    pub seal: bool,
    /// This node's id in the key directory. Unset: `executor-<zone>` for an executor,
    /// `edge-<zone>` for the API and the submitting commands.
    pub node_id: Option<String>,
    /// The zone the API and the submitting commands run in (executors take `--zone`);
    /// needed to read sealed outputs there.
    pub zone: Option<String>,
    /// Keep the node key in a TPM reached through this TCTI (e.g.
    /// `swtpm:host=127.0.0.1,port=2321`, `device:/dev/tpmrm0`) instead of `key_dir`.
    pub tpm_tcti: Option<String>,
    /// The notary (`triad notary`) signs a checkpoint of an event-store partition at least
    /// every this many records…
    pub checkpoint_every: u64,
    /// …and when the partition has been quiet this long with records pending.
    pub checkpoint_idle_ms: u64,
}

impl Default for SovereigntyConfig {
    fn default() -> Self {
        Self {
            key_dir: PathBuf::from(".triad/keys"),
            operator_public_key: None,
            seal: false,
            node_id: None,
            zone: None,
            tpm_tcti: None,
            checkpoint_every: 256,
            checkpoint_idle_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where executors serve Prometheus metrics (`GET /metrics`); unset: not served.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info,triad=debug`.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            registry: RegistryConfig::default(),
            postgres: PostgresConfig::default(),
            blobs: BlobsConfig::default(),
            projection: ProjectionConfig::default(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            codec: CodecConfig::default(),
            log: LogConfig::default(),
            policy: PolicyConfig::default(),
            processor: ProcessorConfig::default(),
            executor: ExecutorConfig::default(),
            sovereignty: SovereigntyConfig::default(),
            credits: CreditsConfig::default(),
            models: BTreeMap::from([("triad-local".to_owned(), ModelConfig::embedded())]),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            client_id: "triad".to_owned(),
            partitions: 6,
            replication_factor: 1,
            group_prefix: "triad".to_owned(),
            topic_prefix: String::new(),
            fetch_wait_max_ms: 10,
            background_fetch_wait_max_ms: 100,
            static_membership: true,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            topic: "_schemas".to_owned(),
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgresql://triad@127.0.0.1:5432/triad".to_owned(),
            pool_size: 4,
        }
    }
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            max_allocation_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: "info,tokio_postgres=warn".to_owned(),
        }
    }
}

/// Where the layers come from. `file: None` reads `triad.toml` if it exists (or the file named
/// by `TRIAD_CONFIG`, which must exist).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// `key=value` overrides from the command line, applied last.
    pub overrides: Vec<String>,
}

impl Config {
    pub fn load(sources: &Sources) -> Result<Self> {
        Self::figment(
            sources,
            std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from),
        )?
        .extract::<Config>()
        .map_err(Error::from)
        .and_then(Config::validated)
    }

    fn figment(sources: &Sources, env_file: Option<PathBuf>) -> Result<Figment> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match sources.file.clone().or(env_file) {
            Some(path) => {
                if !path.exists() {
                    return Err(Error::MissingFile { path });
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        figment = figment.merge(Env::prefixed("TRIAD_").split("__").ignore(&["config"]));
        for o in &sources.overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| Error::BadOverride(o.clone()))?;
            let value: figment::value::Value =
                value.parse().map_err(|_| Error::BadOverride(o.clone()))?;
            figment = figment.merge(Serialized::default(key.trim(), value));
        }
        Ok(figment)
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validated(self) -> Result<Self> {
        let invalid = |key, reason: &str| {
            Err(Error::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self
            .kafka
            .bootstrap_servers
            .split(',')
            .any(|s| !s.trim().contains(':'))
        {
            return invalid(
                "kafka.bootstrap_servers",
                "expected a comma-separated host:port list",
            );
        }
        if self.kafka.client_id.trim().is_empty() {
            return invalid("kafka.client_id", "must not be empty");
        }
        if self.api.limits.requests_per_second > 0 && self.api.limits.burst == 0 {
            return invalid(
                "api.limits.burst",
                "must be at least 1 while api.limits.requests_per_second is set",
            );
        }
        if !(1..=10_000).contains(&self.kafka.partitions) {
            return invalid("kafka.partitions", "must be between 1 and 10000");
        }
        if !self
            .kafka
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return invalid("kafka.topic_prefix", "may only contain A-Z a-z 0-9 . _ -");
        }
        if !(1..=16).contains(&self.kafka.replication_factor) {
            return invalid("kafka.replication_factor", "must be between 1 and 16");
        }
        if !(self.registry.url.starts_with("http://") || self.registry.url.starts_with("https://"))
        {
            return invalid("registry.url", "must start with http:// or https://");
        }
        if self.registry.topic.trim().is_empty() {
            return invalid("registry.topic", "must not be empty");
        }
        if !self.postgres.url.starts_with("postgresql://")
            && !self.postgres.url.starts_with("postgres://")
        {
            return invalid("postgres.url", "must be a postgresql:// URL");
        }
        if self
            .postgres
            .url
            .split('@')
            .next()
            .is_some_and(|auth| auth.matches(':').count() > 1)
        {
            return invalid(
                "postgres.url",
                "must not contain a password; use PGPASSWORD or a .pgpass file",
            );
        }
        if !(1024..=768 * 1024).contains(&self.blobs.inline_max_bytes) {
            return invalid(
                "blobs.inline_max_bytes",
                "must be between 1024 and 786432 (records must stay below the broker's message limit)",
            );
        }
        let schema = &self.projection.schema;
        if schema.is_empty()
            || schema.len() > 40
            || !schema.starts_with(|c: char| c.is_ascii_lowercase())
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return invalid(
                "projection.schema",
                "expected 1-40 characters of a-z, 0-9 and _, starting with a letter",
            );
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes", "must be at least 1024");
        }
        if self.projection.batch_max_records == 0 {
            return invalid("projection.batch_max_records", "must be at least 1");
        }
        if self.postgres.pool_size == 0 {
            return invalid("postgres.pool_size", "must be at least 1");
        }
        if self.codec.max_allocation_bytes < 1024 {
            return invalid("codec.max_allocation_bytes", "must be at least 1024");
        }
        if self.policy.zones.is_empty() {
            return invalid("policy.zones", "must name at least one zone");
        }
        if let Some(z) = self.policy.zones.iter().find(|z| !valid_zone(z)) {
            return Err(Error::Invalid {
                key: "policy.zones",
                reason: format!("{z:?}: a zone is 1-32 characters A-Z 0-9 -"),
            });
        }
        for (group, zones) in &self.policy.groups {
            if let Some(z) = zones.iter().find(|z| !self.policy.zones.contains(z)) {
                return Err(Error::Invalid {
                    key: "policy.groups",
                    reason: format!("group {group} names {z:?}, which is not in policy.zones"),
                });
            }
        }
        for (zone, hosts) in &self.policy.hosts {
            if !self.policy.zones.contains(zone) {
                return Err(Error::Invalid {
                    key: "policy.hosts",
                    reason: format!("{zone} is not in policy.zones"),
                });
            }
            if hosts.is_empty() {
                return Err(Error::Invalid {
                    key: "policy.hosts",
                    reason: format!(
                        "{zone}: an empty list would refuse every remote model; remove the entry to allow any host"
                    ),
                });
            }
        }
        for (id, m) in &self.models {
            let Some(host) = m.base_url.as_deref().and_then(url_host) else {
                continue;
            };
            if let Some((zone, _)) = m
                .zones
                .iter()
                .filter_map(|z| self.policy.hosts.get(z).map(|h| (z, h)))
                .find(|(_, allowed)| !allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)))
            {
                return Err(Error::Invalid {
                    key: "models",
                    reason: format!(
                        "models.{id}.base_url: host {host} is not allowed in zone {zone} (policy.hosts.{zone})"
                    ),
                });
            }
        }
        if let Some(pk) = &self.sovereignty.operator_public_key
            && !(pk.len() == 130
                && pk.starts_with("04")
                && pk.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return invalid(
                "sovereignty.operator_public_key",
                "expected an uncompressed P-256 point in hex (130 characters starting with 04)",
            );
        }
        if self.sovereignty.seal && self.sovereignty.operator_public_key.is_none() {
            return invalid(
                "sovereignty.seal",
                "sealing needs sovereignty.operator_public_key (the key directory's signer)",
            );
        }
        if let Some(z) = &self.sovereignty.zone
            && !self.policy.zones.contains(z)
        {
            return Err(Error::Invalid {
                key: "sovereignty.zone",
                reason: format!("{z:?} is not in policy.zones"),
            });
        }
        if self.sovereignty.checkpoint_every == 0 {
            return invalid("sovereignty.checkpoint_every", "must be at least 1");
        }
        if !(4..=3_600_000).contains(&self.sovereignty.checkpoint_idle_ms) {
            return invalid(
                "sovereignty.checkpoint_idle_ms",
                "must be between 4 and 3600000",
            );
        }
        if self.executor.max_in_flight == 0 {
            return invalid("executor.max_in_flight", "must be at least 1");
        }
        if self.executor.heartbeat_ms == 0
            || self.executor.heartbeat_ms >= self.processor.liveness_ms
        {
            return invalid(
                "executor.heartbeat_ms",
                "must be above 0 and below processor.liveness_ms",
            );
        }
        if self.executor.breaker_failures == 0 {
            return invalid("executor.breaker_failures", "must be at least 1");
        }
        if self.models.is_empty() {
            return invalid("models", "the catalogue needs at least one model");
        }
        for (id, m) in &self.models {
            let http = matches!(m.kind, ModelKind::Openai | ModelKind::Anthropic);
            let reason = if http && m.base_url.is_none() {
                Some("base_url is required for a remote model".to_owned())
            } else if let Some(z) = m.zones.iter().find(|z| !self.policy.zones.contains(z)) {
                Some(format!("zone {z:?} is not in policy.zones"))
            } else if !m.in_executor() && m.zones.is_empty() {
                Some("a remote model needs the zones where it processes data".to_owned())
            } else if m.kind != ModelKind::Wasm
                && (m.component.is_some() || !m.allowed_hosts.is_empty())
            {
                Some("component and allowed_hosts are for kind = \"wasm\"".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::Invalid {
                    key: "models",
                    reason: format!("models.{id}: {reason}"),
                });
            }
        }
        Ok(self)
    }
}

fn valid_zone(z: &str) -> bool {
    (1..=32).contains(&z.len())
        && z.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
// figment's Jail closures return its (large) error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in_jail(sources: &Sources) -> Result<Config> {
        Config::figment(sources, None)?
            .extract::<Config>()
            .map_err(Error::from)
            .and_then(Config::validated)
    }

    #[test]
    fn defaults_are_valid() {
        Jail::expect_with(|_| {
            assert_eq!(
                load_in_jail(&Sources::default()).unwrap(),
                Config::default()
            );
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "triad.toml",
                "[kafka]\nbootstrap_servers = \"file:1\"\nclient_id = \"from-file\"\npartitions = 3\n",
            )?;
            jail.set_env("TRIAD_KAFKA__CLIENT_ID", "from-env");
            jail.set_env("TRIAD_KAFKA__PARTITIONS", "4");
            let sources = Sources {
                file: None,
                overrides: vec!["kafka.partitions=5".to_owned()],
            };
            let c = load_in_jail(&sources).unwrap();
            assert_eq!(c.kafka.bootstrap_servers, "file:1");
            assert_eq!(c.kafka.client_id, "from-env");
            assert_eq!(c.kafka.partitions, 5);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_in_every_layer() {
        Jail::expect_with(|jail| {
            jail.create_file("triad.toml", "[kafka]\nbootstrap_server = \"x:1\"\n")?;
            let e = load_in_jail(&Sources::default()).unwrap_err().to_string();
            assert!(e.contains("bootstrap_server"), "{e}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("TRIAD_REGISTRY__LISTN", "1");
            let e = load_in_jail(&Sources::default()).unwrap_err().to_string();
            assert!(e.contains("listn"), "{e}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let sources = Sources {
                file: None,
                overrides: vec!["nope.key=1".to_owned()],
            };
            let e = load_in_jail(&sources).unwrap_err().to_string();
            assert!(e.contains("nope"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn invalid_values_name_the_key() {
        Jail::expect_with(|_| {
            for (set, key) in [
                ("kafka.partitions=0", "kafka.partitions"),
                ("kafka.bootstrap_servers=nohost", "kafka.bootstrap_servers"),
                ("registry.url=ftp://x", "registry.url"),
                ("postgres.url=postgresql://u:secret@h/db", "postgres.url"),
                ("models.x.kind=openai", "models.x: base_url is required"),
                (
                    "models.triad-local.zones=[\"MARS\"]",
                    "models.triad-local: zone \"MARS\"",
                ),
                ("policy.zones=[\"us east\"]", "policy.zones"),
                ("executor.max_in_flight=0", "executor.max_in_flight"),
                (
                    "sovereignty.operator_public_key=\"04zz\"",
                    "sovereignty.operator_public_key",
                ),
                ("projection.schema=Read-Models", "projection.schema"),
                (
                    "projection.batch_max_records=0",
                    "projection.batch_max_records",
                ),
            ] {
                let sources = Sources {
                    file: None,
                    overrides: vec![set.to_owned()],
                };
                let e = load_in_jail(&sources).unwrap_err().to_string();
                assert!(e.contains(key), "{set}: {e}");
                assert!(
                    !e.contains("secret"),
                    "the error must not echo a password: {e}"
                );
            }
            let sources = Sources {
                file: None,
                overrides: vec!["registry.listen=notanaddr".to_owned()],
            };
            let e = load_in_jail(&sources).unwrap_err().to_string();
            assert!(e.contains("registry.listen"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn remote_model_hosts_must_be_allowed_in_their_zones() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "triad.toml",
                r#"
[policy.hosts]
US-EAST = ["llm.east.example"]

[models.east]
kind = "openai"
base_url = "https://LLM.east.example:8443/v1"
zones = ["US-EAST"]
"#,
            )?;
            let sources = Sources {
                file: Some("triad.toml".into()),
                overrides: vec![],
            };
            assert!(
                load_in_jail(&sources).is_ok(),
                "listed (case-insensitively)"
            );
            for (set, expected) in [
                (
                    "models.east.base_url=\"http://elsewhere.example/v1\"",
                    "models.east.base_url: host elsewhere.example is not allowed in zone US-EAST",
                ),
                ("policy.hosts.MARS=[\"x\"]", "policy.hosts"),
                ("policy.hosts.US-EAST=[]", "an empty list would refuse"),
            ] {
                let sources = Sources {
                    file: Some("triad.toml".into()),
                    overrides: vec![set.to_owned()],
                };
                let e = load_in_jail(&sources).unwrap_err().to_string();
                assert!(e.contains(expected), "{set}: {e}");
            }
            Ok(())
        });
        assert_eq!(url_host("https://u:p@[::1]:80/x").as_deref(), Some("::1"));
        assert_eq!(
            url_host("http://Host.example?q").as_deref(),
            Some("host.example")
        );
        assert_eq!(url_host("nohost"), None);
    }

    #[test]
    fn a_named_file_must_exist() {
        Jail::expect_with(|_| {
            let sources = Sources {
                file: Some("missing.toml".into()),
                overrides: vec![],
            };
            assert!(matches!(
                load_in_jail(&sources),
                Err(Error::MissingFile { .. })
            ));
            Ok(())
        });
    }
}
