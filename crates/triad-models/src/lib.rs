//! Model adapters. Models are commodities behind one trait, [`ModelAdapter`] (the seed's
//! interface): `invoke`, `capabilities` (the fingerprint the router ranks by), optional
//! `stream` and `bid`, and `health`. Implementations:
//!
//! - [`local::LocalModel`]: the embedded default model, no key and no network;
//! - [`openai::OpenAiCompatible`]: chat completions (AetherAI on vLLM, Grok, Kimi);
//! - [`anthropic::Anthropic`]: the Messages API (Claude).
//!
//! [`Catalogue::from_config`] builds the adapters from `[models.*]` plus the providers whose
//! key variables are set. API keys are held in [`Secret`], whose `Debug` and `Display` never
//! show them; errors never include request headers.

pub mod anthropic;
mod http;
pub mod local;
pub mod openai;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use triad_config::{ModelConfig, ModelKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model {model}: {reason}")]
    Config { model: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a model is, for the router: the seed's fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub id: String,
    pub latency_p50_ms: u64,
    pub latency_p95_ms: u64,
    pub latency_p99_ms: u64,
    /// Millionths of a credit per 1K input / output tokens.
    pub input_micros_per_1k: i64,
    pub output_micros_per_1k: i64,
    pub specialties: Vec<String>,
    /// Where it processes data. Empty: it runs inside the executor, in the executor's zone.
    pub zones: Vec<String>,
    pub max_context: u32,
    /// The host its calls go to (remote models; checked against the policy's host allowlist
    /// of each of its zones before every call). None: it runs inside the executor.
    pub endpoint_host: Option<String>,
}

impl Fingerprint {
    /// The cost of a call with this usage, rounded up to the next micro-credit.
    pub fn cost_micros(&self, input_tokens: i64, output_tokens: i64) -> i64 {
        let micros = input_tokens
            .saturating_mul(self.input_micros_per_1k)
            .saturating_add(output_tokens.saturating_mul(self.output_micros_per_1k));
        micros.saturating_add(999) / 1000
    }
}

/// One model call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRequest {
    /// The filled prompt.
    pub prompt: String,
    pub max_tokens: u32,
    /// The whole call, connection included, must finish within this.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelResponse {
    pub output: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Why a call failed, and what the caller may do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub message: String,
    /// Worth retrying (timeouts, 429, 5xx, resets, malformed bodies); 400/401/403 are not.
    pub retryable: bool,
    /// The provider's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
}

impl ModelError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
            status: None,
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
            status: None,
        }
    }
}

/// A model that bids in auctions from its declared figures (`models.<id>.bid_confidence`):
/// the task's price at its declared prices (the prompt's estimated tokens and the full
/// `max_tokens`), its declared p50, and the configured confidence. Providers have no bidding
/// API, so their adapter bids on their behalf, and the auction's standing holds it to the
/// promise.
#[derive(Debug)]
pub struct DeclaredBids {
    inner: Arc<dyn ModelAdapter>,
    confidence: f64,
}

impl DeclaredBids {
    pub fn new(inner: Arc<dyn ModelAdapter>, confidence: f64) -> Self {
        Self { inner, confidence }
    }
}

#[async_trait::async_trait]
impl ModelAdapter for DeclaredBids {
    fn capabilities(&self) -> &Fingerprint {
        self.inner.capabilities()
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        self.inner.invoke(request).await
    }

    async fn stream(&self, request: &ModelRequest) -> Result<Vec<String>, ModelError> {
        self.inner.stream(request).await
    }

    async fn bid(&self, request: &ModelRequest) -> Option<Bid> {
        let f = self.inner.capabilities();
        let prompt = i64::from(triad_domain::estimate_tokens(&request.prompt));
        Some(Bid {
            price_micros: f.cost_micros(prompt, i64::from(request.max_tokens)),
            latency_ms: f.latency_p50_ms,
            confidence: self.confidence,
        })
    }

    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

/// An offer to run a task (the market issue builds auctions on it).
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub price_micros: i64,
    pub latency_ms: u64,
    pub confidence: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

/// Every model implements this; the router and executor see nothing else.
#[async_trait::async_trait]
pub trait ModelAdapter: Send + Sync + std::fmt::Debug {
    fn capabilities(&self) -> &Fingerprint;

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError>;

    /// Streams the output in chunks. The default yields the whole output as one chunk.
    async fn stream(&self, request: &ModelRequest) -> Result<Vec<String>, ModelError> {
        Ok(vec![self.invoke(request).await?.output])
    }

    /// A bid for the task, when the model takes part in auctions.
    async fn bid(&self, _request: &ModelRequest) -> Option<Bid> {
        None
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// An API key. Its `Debug`/`Display` print `[redacted]`, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The adapters of an installation, by model id.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub models: BTreeMap<String, Arc<dyn ModelAdapter>>,
    /// The models whose code can be replaced while they run (WebAssembly components), by
    /// model id: each is also in `models`.
    pub replaceable: BTreeMap<String, Arc<dyn Replaceable>>,
}

/// The code version a replaceable model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeVersion {
    /// Counts up from 1 (the configured code).
    pub number: u64,
    /// Lower-case hex SHA-256 of the code.
    pub sha256: String,
}

/// What [`Replaceable::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// New calls now run this version; calls in flight finish on the one they started with.
    Installed(CodeVersion),
    /// The model already runs this version or a later one (a replayed registration).
    AlreadyCurrent(CodeVersion),
}

/// A model whose code a registration can replace while it serves (hot swap).
#[async_trait::async_trait]
pub trait Replaceable: Send + Sync + std::fmt::Debug {
    fn code_version(&self) -> CodeVersion;

    /// Checks `code` like a first load and, when `number` is above the running version,
    /// switches new calls to it. An error names what is wrong and changes nothing.
    async fn install(&self, number: u64, code: Vec<u8>) -> Result<Install, String>;
}

/// The providers of the seed, enabled when their variable is set: (model id, variable, kind,
/// base URL or `None` when the variable is the URL, zones, specialties, input and output
/// micro-credits per 1K tokens, p50 latency, context window).
struct Preset {
    id: &'static str,
    var: &'static str,
    kind: ModelKind,
    base_url: Option<&'static str>,
    model: &'static str,
    zones: &'static [&'static str],
    specialties: &'static [&'static str],
    input_per_1k: i64,
    output_per_1k: i64,
    p50: u64,
    context: u32,
}

const PRESETS: &[Preset] = &[
    Preset {
        id: "aetherai-v1",
        var: "AETHERAI_URL",
        kind: ModelKind::Openai,
        base_url: None,
        model: "aetherai-v1",
        zones: &["US-EAST"],
        specialties: &[
            "async_architecture",
            "first_principles",
            "distributed_systems",
        ],
        input_per_1k: 0,
        output_per_1k: 0,
        p50: 150,
        context: 200_000,
    },
    Preset {
        id: "grok-4-fast",
        var: "GROK_API_KEY",
        kind: ModelKind::Openai,
        base_url: Some("https://api.x.ai"),
        model: "grok-4-fast",
        zones: &["US-CENTRAL"],
        specialties: &["speed", "creativity", "real_time"],
        input_per_1k: 200,
        output_per_1k: 500,
        p50: 50,
        context: 131_072,
    },
    Preset {
        id: "claude-sonnet-4-5",
        var: "CLAUDE_API_KEY",
        kind: ModelKind::Anthropic,
        base_url: Some("https://api.anthropic.com"),
        model: "claude-sonnet-4-5",
        zones: &["US-EAST"],
        specialties: &[
            "reasoning",
            "safety",
            "first_principles",
            "complex_analysis",
        ],
        input_per_1k: 3_000,
        output_per_1k: 15_000,
        p50: 200,
        context: 200_000,
    },
    Preset {
        id: "kimi-k2",
        var: "KIMI_API_KEY",
        kind: ModelKind::Openai,
        base_url: Some("https://api.moonshot.ai"),
        model: "kimi-k2-0905-preview",
        // Moonshot processes data outside the default zones: Kimi is eligible only where
        // `models.kimi-k2.zones` is configured explicitly.
        zones: &[],
        specialties: &["long_context", "coding"],
        input_per_1k: 600,
        output_per_1k: 2_500,
        p50: 300,
        context: 256_000,
    },
];

impl Catalogue {
    /// The configured models plus each preset whose variable `env` returns. A configured
    /// model with the preset's id wins. A preset without zones is skipped with a warning.
    pub fn from_config(
        configured: &BTreeMap<String, ModelConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut all = configured.clone();
        for p in PRESETS {
            let Some(value) = env(p.var) else { continue };
            if all.contains_key(p.id) {
                continue;
            }
            if p.zones.is_empty() {
                tracing::warn!(
                    model = p.id,
                    "{} is set but the model has no zones inside the policy; configure models.{}.zones to use it",
                    p.var,
                    p.id
                );
                continue;
            }
            let (base_url, api_key_env) = match p.base_url {
                Some(url) => (url.to_owned(), Some(p.var.to_owned())),
                None => (value, None),
            };
            all.insert(
                p.id.to_owned(),
                ModelConfig {
                    kind: p.kind,
                    base_url: Some(base_url),
                    model: Some(p.model.to_owned()),
                    api_key_env,
                    zones: p.zones.iter().map(|z| (*z).to_owned()).collect(),
                    specialties: p.specialties.iter().map(|s| (*s).to_owned()).collect(),
                    input_micros_per_1k: p.input_per_1k,
                    output_micros_per_1k: p.output_per_1k,
                    latency_p50_ms: p.p50,
                    latency_p95_ms: p.p50 * 3,
                    latency_p99_ms: p.p50 * 6,
                    max_context: p.context,
                    timeout_ms: 60_000,
                    component: None,
                    allowed_hosts: Vec::new(),
                    bid_confidence: None,
                },
            );
        }
        let mut models: BTreeMap<String, Arc<dyn ModelAdapter>> = BTreeMap::new();
        for (id, m) in &all {
            // Components are loaded by `triad_wasm::load_catalogue`, which calls this for
            // the others (this crate knows no wasmtime).
            if let Some(adapter) = adapter(id, m, &env)? {
                models.insert(id.clone(), adapter);
            }
        }
        Ok(Self {
            models,
            replaceable: BTreeMap::new(),
        })
    }

    /// Model ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }
}

/// The adapter of model `id` as configured by `m` (API keys read through `env`); `None` for
/// `kind = "wasm"`, whose components `triad_wasm` loads. Also builds the adapters of remote
/// models that registered themselves (the executor's registry view).
pub fn adapter(
    id: &str,
    m: &ModelConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn ModelAdapter>>> {
    let id = &id.to_owned();
    let fingerprint = Fingerprint {
        id: id.clone(),
        latency_p50_ms: m.latency_p50_ms,
        latency_p95_ms: m.latency_p95_ms,
        latency_p99_ms: m.latency_p99_ms,
        input_micros_per_1k: m.input_micros_per_1k,
        output_micros_per_1k: m.output_micros_per_1k,
        specialties: m.specialties.clone(),
        zones: m.zones.clone(),
        max_context: m.max_context,
        endpoint_host: m
            .base_url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_owned)),
    };
    let key = match &m.api_key_env {
        Some(var) => Some(Secret::new(env(var).ok_or_else(|| Error::Config {
            model: id.clone(),
            reason: format!("the API key variable {var} is not set"),
        })?)),
        None => None,
    };
    let base_url = || {
        m.base_url.clone().ok_or_else(|| Error::Config {
            model: id.clone(),
            reason: "base_url is required".to_owned(),
        })
    };
    let provider_model = m.model.clone().unwrap_or_else(|| id.clone());
    let timeout = Duration::from_millis(m.timeout_ms);
    let adapter: Arc<dyn ModelAdapter> = match m.kind {
        ModelKind::Wasm => return Ok(None),
        ModelKind::Local => Arc::new(local::LocalModel::new(fingerprint)),
        ModelKind::Openai => Arc::new(openai::OpenAiCompatible::new(
            fingerprint,
            &base_url()?,
            provider_model,
            key,
            timeout,
        )?),
        ModelKind::Anthropic => Arc::new(anthropic::Anthropic::new(
            fingerprint,
            &base_url()?,
            provider_model,
            key.ok_or_else(|| Error::Config {
                model: id.clone(),
                reason: "the Anthropic API needs api_key_env".to_owned(),
            })?,
            timeout,
        )?),
    };
    let adapter = match m.bid_confidence {
        None => adapter,
        Some(c) if c.is_finite() && (0.0..=1.0).contains(&c) => {
            Arc::new(DeclaredBids::new(adapter, c))
        }
        Some(c) => {
            return Err(Error::Config {
                model: id.clone(),
                reason: format!("bid_confidence must be within [0, 1], not {c}"),
            });
        }
    };
    Ok(Some(adapter))
}

/// The configuration a self-registered remote model stands for: its adapter is built like a
/// configured one's.
pub fn remote_config(remote: &triad_domain::RemoteModel) -> ModelConfig {
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    ModelConfig {
        kind: match remote.kind {
            triad_domain::RemoteKind::Openai => ModelKind::Openai,
            triad_domain::RemoteKind::Anthropic => ModelKind::Anthropic,
        },
        base_url: Some(remote.base_url.clone()),
        model: Some(remote.model.clone()),
        api_key_env: remote.api_key_env.clone(),
        zones: remote.zones.clone(),
        specialties: remote.specialties.clone(),
        input_micros_per_1k: remote.input_micros_per_1k,
        output_micros_per_1k: remote.output_micros_per_1k,
        latency_p50_ms: non_negative(remote.latency_p50_ms),
        latency_p95_ms: non_negative(remote.latency_p95_ms),
        latency_p99_ms: non_negative(remote.latency_p99_ms),
        max_context: u32::try_from(remote.max_context).unwrap_or(u32::MAX),
        timeout_ms: non_negative(remote.timeout_ms),
        component: None,
        allowed_hosts: Vec::new(),
        bid_confidence: remote.bid_confidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_join_when_their_variable_is_set_and_keys_stay_hidden() {
        let configured = BTreeMap::from([("triad-local".to_owned(), ModelConfig::local())]);
        let env = |v: &str| match v {
            "GROK_API_KEY" => Some("xai-secret-123".to_owned()),
            "AETHERAI_URL" => Some("http://vllm:8000".to_owned()),
            "KIMI_API_KEY" => Some("k".to_owned()),
            _ => None,
        };
        let c = Catalogue::from_config(&configured, env).unwrap();
        assert_eq!(c.ids(), ["aetherai-v1", "grok-4-fast", "triad-local"]);
        let printed = format!("{c:?}");
        assert!(!printed.contains("xai-secret-123"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn a_missing_key_variable_is_an_error_naming_it() {
        let mut m = ModelConfig::local();
        m.kind = ModelKind::Openai;
        m.base_url = Some("http://x".into());
        m.api_key_env = Some("MY_KEY".into());
        m.zones = vec!["US-EAST".into()];
        let e = Catalogue::from_config(&BTreeMap::from([("m".to_owned(), m)]), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MY_KEY") && e.contains("model m"), "{e}");
    }

    #[test]
    fn cost_rounds_up_to_a_micro_credit() {
        let f = Fingerprint {
            id: "m".into(),
            latency_p50_ms: 1,
            latency_p95_ms: 1,
            latency_p99_ms: 1,
            input_micros_per_1k: 3_000,
            output_micros_per_1k: 15_000,
            specialties: vec![],
            zones: vec![],
            max_context: 1,
            endpoint_host: None,
        };
        assert_eq!(f.cost_micros(1000, 1000), 18_000);
        assert_eq!(f.cost_micros(1, 0), 3);
        assert_eq!(f.cost_micros(0, 0), 0);
    }
}
