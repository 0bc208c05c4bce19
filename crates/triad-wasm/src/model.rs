//! A component loaded for one model id, as a `ModelAdapter`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use triad_models::{
    Bid, CodeVersion, Fingerprint, Install, ModelAdapter, ModelError, ModelRequest, ModelResponse,
    Replaceable,
};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use crate::egress::Egress;
use crate::host::{State, WasmHost};
use crate::{Error, Result};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "adapter",
        imports: {
            "triad:adapter/host.egress": async,
        },
        exports: {
            default: async,
        },
    });
}

use bindings::triad::adapter::host;
use bindings::triad::adapter::types;

impl types::Host for State {}

impl host::Host for State {
    async fn egress(&mut self, request: host::HttpRequest) -> Result<host::HttpResponse, String> {
        let egress = Arc::clone(&self.egress);
        egress.send(&self.model, request, self.deadline).await
    }

    fn log(&mut self, level: host::Level, message: String) {
        let model = &*self.model;
        match level {
            host::Level::Debug => tracing::debug!(model, message, "adapter log"),
            host::Level::Info => tracing::info!(model, message, "adapter log"),
            host::Level::Warn => tracing::warn!(model, message, "adapter log"),
            host::Level::Error => tracing::error!(model, message, "adapter log"),
        }
    }

    fn setting(&mut self, name: String) -> Option<String> {
        self.settings.get(&name).cloned()
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// One version of a model's component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// SHA-256 of the component's bytes.
    pub sha256: String,
    /// Counts up from 1 with each swap.
    pub number: u64,
}

struct Loaded {
    pre: bindings::AdapterPre<State>,
    version: Version,
}

/// A model whose adapter is a WebAssembly component.
pub struct WasmModel {
    host: WasmHost,
    id: Arc<str>,
    fingerprint: Fingerprint,
    egress: Arc<Egress>,
    settings: Arc<BTreeMap<String, String>>,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for WasmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModel")
            .field("id", &self.id)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl WasmModel {
    /// Loads `bytes` for model `id`. The fingerprint is the component's own `capabilities`
    /// with the id and `zones` the policy gives (a component cannot choose its zones).
    pub async fn load(
        host: &WasmHost,
        id: &str,
        zones: Vec<String>,
        bytes: &[u8],
        egress: Egress,
    ) -> Result<Self> {
        Self::load_with_settings(host, id, zones, bytes, egress, BTreeMap::new()).await
    }

    /// [`WasmModel::load`] with the values `host.setting` returns (`base-url`, `model`).
    pub async fn load_with_settings(
        host: &WasmHost,
        id: &str,
        zones: Vec<String>,
        bytes: &[u8],
        egress: Egress,
        settings: BTreeMap<String, String>,
    ) -> Result<Self> {
        let (pre, sha256) = host.prepare(id, bytes)?;
        let egress = Arc::new(egress);
        let loaded = Arc::new(Loaded {
            pre,
            version: Version { sha256, number: 1 },
        });
        let mut model = Self {
            host: host.clone(),
            id: Arc::from(id),
            fingerprint: Fingerprint {
                id: id.to_owned(),
                latency_p50_ms: 0,
                latency_p95_ms: 0,
                latency_p99_ms: 0,
                input_micros_per_1k: 0,
                output_micros_per_1k: 0,
                specialties: Vec::new(),
                zones,
                max_context: 0,
                endpoint_host: None,
            },
            egress,
            settings: Arc::new(settings),
            current: RwLock::new(Arc::clone(&loaded)),
        };
        let caps = model
            .call(&loaded, Duration::from_secs(5), |adapter, store| {
                Box::pin(adapter.call_capabilities(store))
            })
            .await
            .map_err(|e| Error::Call {
                model: id.to_owned(),
                reason: format!("capabilities: {}", e.message),
            })?;
        let f = &mut model.fingerprint;
        f.specialties = caps.specialties;
        f.max_context = caps.max_context;
        f.input_micros_per_1k = caps.input_micros_per_1k;
        f.output_micros_per_1k = caps.output_micros_per_1k;
        f.latency_p50_ms = caps.latency_p50_ms;
        // Until measured figures exist (the market issue), the tail is estimated from p50.
        f.latency_p95_ms = caps.latency_p50_ms.saturating_mul(2);
        f.latency_p99_ms = caps.latency_p50_ms.saturating_mul(3);
        Ok(model)
    }

    /// The version new calls use.
    pub fn version(&self) -> Version {
        self.current
            .read()
            .map(|l| l.version.clone())
            .unwrap_or(Version {
                sha256: String::new(),
                number: 0,
            })
    }

    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// Switches new calls to `bytes` (checked like a first load); calls in flight finish on
    /// the version they started with. Returns the new version.
    pub fn swap(&self, bytes: &[u8]) -> Result<Version> {
        let (pre, sha256) = self.host.prepare(&self.id, bytes)?;
        let number = self.version().number + 1;
        self.put(Loaded {
            pre,
            version: Version { sha256, number },
        })
    }

    /// Makes `loaded` the version new calls use, unless a version as new is already there
    /// (two registrations racing: the higher number wins whatever the order).
    fn put(&self, loaded: Loaded) -> Result<Version> {
        let mut current = self.current.write().map_err(|_| Error::Call {
            model: self.id.to_string(),
            reason: "the version lock is poisoned".to_owned(),
        })?;
        if loaded.version.number <= current.version.number {
            return Ok(current.version.clone());
        }
        let version = loaded.version.clone();
        *current = Arc::new(loaded);
        tracing::info!(model = %self.id, version = version.number, sha256 = %version.sha256, "adapter swapped");
        Ok(version)
    }

    /// Compiles and links `bytes` off the async runtime (compiling takes up to a second)
    /// and checks the component answers `capabilities` before anyone routes to it.
    async fn check(&self, number: u64, bytes: Vec<u8>) -> Result<Loaded> {
        let host = self.host.clone();
        let id = Arc::clone(&self.id);
        let (pre, sha256) = tokio::task::spawn_blocking(move || host.prepare(&id, &bytes))
            .await
            .map_err(|e| Error::Call {
                model: self.id.to_string(),
                reason: format!("compiling: {e}"),
            })??;
        let loaded = Loaded {
            pre,
            version: Version { sha256, number },
        };
        let caps = self
            .call(&loaded, Duration::from_secs(5), |adapter, store| {
                Box::pin(adapter.call_capabilities(store))
            })
            .await
            .map_err(|e| Error::Call {
                model: self.id.to_string(),
                reason: format!("capabilities: {}", e.message),
            })?;
        if caps.specialties != self.fingerprint.specialties {
            // The router keeps ranking on the first version's fingerprint (docs/wasm_adapter_spec.md).
            tracing::warn!(
                model = %self.id,
                declared = ?caps.specialties,
                routed_on = ?self.fingerprint.specialties,
                "the new version declares other specialties; routing keeps the first version's"
            );
        }
        Ok(loaded)
    }

    fn loaded(&self) -> Result<Arc<Loaded>, ModelError> {
        self.current
            .read()
            .map(|l| Arc::clone(&l))
            .map_err(|_| ModelError::fatal("the adapter's version lock is poisoned"))
    }

    /// Runs `f` on a fresh instance of `loaded` with the memory cap, a deadline `timeout`
    /// from now and deny-all WASI. A trap (deadline, memory, a guest bug) is a retryable
    /// failure: the next attempt gets a fresh instance.
    async fn call<R>(
        &self,
        loaded: &Loaded,
        timeout: Duration,
        f: impl for<'a> FnOnce(
            &'a bindings::Adapter,
            &'a mut Store<State>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R, ModelError> {
        let config = self.host.config();
        let started = Instant::now();
        let deadline = started + timeout;
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(config.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            model: Arc::clone(&self.id),
            egress: Arc::clone(&self.egress),
            settings: Arc::clone(&self.settings),
            deadline: tokio::time::Instant::from_std(deadline),
        };
        let mut store = Store::new(self.host.engine(), state);
        store.limiter(|s| &mut s.limits);
        if let Some(fuel) = config.fuel {
            store.set_fuel(fuel).map_err(|e| {
                ModelError::fatal(format!("wasm adapter {}: setting fuel: {e:#}", self.id))
            })?;
        }
        // Every tick the guest yields to the runtime; past the deadline it traps.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::msg("deadline exceeded"))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let model = &*self.id;
        let adapter = loaded
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| trap(model, "instantiating", &e, started, timeout))?;
        f(&adapter, &mut store)
            .await
            .map_err(|e| trap(model, "calling", &e, started, timeout))
    }
}

/// A trap or host error as a retryable model error, saying which limit stopped the guest.
fn trap(
    model: &str,
    what: &str,
    e: &wasmtime::Error,
    started: Instant,
    timeout: Duration,
) -> ModelError {
    let text = format!("{e:#}");
    let kind = e.downcast_ref::<wasmtime::Trap>();
    let reason = if matches!(kind, Some(wasmtime::Trap::OutOfFuel)) {
        "ran out of fuel".to_owned()
    } else if matches!(kind, Some(wasmtime::Trap::Interrupt)) || text.contains("deadline exceeded")
    {
        format!(
            "stopped at its deadline ({} ms; after {} ms)",
            timeout.as_millis(),
            started.elapsed().as_millis()
        )
    } else if text.contains("memory") && text.contains("grow")
        || text.contains("forcing a memory growth failure")
    {
        "ran out of its memory limit".to_owned()
    } else {
        text
    };
    ModelError::retryable(format!("wasm adapter {model}: {what}: {reason}"))
}

#[async_trait::async_trait]
impl Replaceable for WasmModel {
    fn code_version(&self) -> CodeVersion {
        let v = self.version();
        CodeVersion {
            number: v.number,
            sha256: v.sha256,
        }
    }

    async fn install(&self, number: u64, code: Vec<u8>) -> Result<Install, String> {
        let running = self.version();
        if number <= running.number {
            return Ok(Install::AlreadyCurrent(self.code_version()));
        }
        let loaded = self.check(number, code).await.map_err(|e| e.to_string())?;
        let now = self.put(loaded).map_err(|e| e.to_string())?;
        let now = CodeVersion {
            number: now.number,
            sha256: now.sha256,
        };
        Ok(if now.number == number {
            Install::Installed(now)
        } else {
            Install::AlreadyCurrent(now)
        })
    }
}

fn wit_request(request: &ModelRequest) -> types::Request {
    types::Request {
        prompt: request.prompt.clone(),
        max_tokens: request.max_tokens,
        timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

#[async_trait::async_trait]
impl ModelAdapter for WasmModel {
    fn capabilities(&self) -> &Fingerprint {
        &self.fingerprint
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let loaded = self.loaded()?;
        let wit = wit_request(request);
        let result = self
            .call(&loaded, request.timeout, move |adapter, store| {
                Box::pin(async move { adapter.call_invoke(store, &wit).await })
            })
            .await?;
        match result {
            Ok(r) => Ok(ModelResponse {
                output: r.output,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
            }),
            Err(f) => Err(ModelError {
                message: f.message,
                retryable: f.retryable,
                retry_after: f.retry_after_ms.map(Duration::from_millis),
                status: f.status,
            }),
        }
    }

    async fn bid(&self, request: &ModelRequest) -> Option<Bid> {
        let loaded = self.loaded().ok()?;
        let wit = wit_request(request);
        let bid = self
            .call(&loaded, request.timeout, move |adapter, store| {
                Box::pin(async move { adapter.call_bid(store, &wit).await })
            })
            .await
            .ok()??;
        Some(Bid {
            price_micros: bid.price_micros,
            latency_ms: bid.latency_ms,
            confidence: bid.confidence,
        })
    }
}
