//! The engine every WebAssembly adapter runs on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::egress::Egress;
use crate::model::bindings::{Adapter, AdapterPre};
use crate::{Error, Result, content_hash};

/// Bytes of each pooled memory, table and async stack kept resident between calls.
const KEEP_RESIDENT: usize = 256 << 10;

/// Limits and sizes of the host; the defaults suit a model adapter.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Linear memory one call may use; growing past it traps (default 64 MiB).
    pub memory_bytes: usize,
    /// Calls that may run at once: the pooling allocator's slots (default 64).
    pub instances: u32,
    /// The epoch tick: how often a running guest yields, and the deadline's resolution
    /// (default 5 ms).
    pub tick: Duration,
    /// Fuel per call, for deterministic runs: a call stops after executing this much work
    /// whatever the machine's speed (roughly one unit per WebAssembly instruction). None
    /// (default): only the deadline bounds a call.
    pub fuel: Option<u64>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            instances: 64,
            tick: Duration::from_millis(5),
            fuel: None,
        }
    }
}

/// What a call's store holds: the deny-all WASI context, the memory limits and the model's
/// egress.
pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) model: Arc<str>,
    pub(crate) egress: Arc<Egress>,
    /// The model's `host.setting` values.
    pub(crate) settings: Arc<std::collections::BTreeMap<String, String>>,
    /// The end of the call (the task's timeout), for egress.
    pub(crate) deadline: tokio::time::Instant,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The wasmtime engine, the linker with what adapters may import, a ticker thread driving
/// epochs, and compiled components by content hash. Cheap to clone.
#[derive(Clone)]
pub struct WasmHost {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<State>,
    components: Mutex<HashMap<String, Component>>,
    config: HostConfig,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl WasmHost {
    pub fn new(config: HostConfig) -> Result<Self> {
        let engine_error = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        // A wasm32-wasip2 component is a handful of core instances with one memory; the
        // slots are sized for that so the reservation stays small.
        pool.total_component_instances(config.instances)
            .total_core_instances(config.instances.saturating_mul(8))
            .total_memories(config.instances.saturating_mul(2))
            .total_tables(config.instances.saturating_mul(8))
            .total_stacks(config.instances)
            .max_memory_size(config.memory_bytes)
            // A slot's first pages (the guest's stack and data: the adapters link with a
            // 64 KiB stack) are zeroed in place when a call ends instead of returned to the
            // kernel; madvise and the page faults after it were most of a call's cost.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel.is_some())
            .memory_reservation(u64::try_from(config.memory_bytes).unwrap_or(u64::MAX))
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        Adapter::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(engine_error)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), config.tick);
            // A thread, not a task: it must tick while every runtime worker is busy.
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            }
        };
        std::thread::Builder::new()
            .name("triad-wasm-epoch".to_owned())
            .spawn(ticker)
            .map_err(|e| Error::Engine(format!("starting the epoch ticker: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                components: Mutex::new(HashMap::new()),
                config,
                stop,
            }),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles `bytes` (or takes the compiled component from the cache), checks that the
    /// host provides every import and that it exports the adapter world, and pre-links it.
    /// Returns the pre-linked component and its content hash.
    pub(crate) fn prepare(&self, model: &str, bytes: &[u8]) -> Result<(AdapterPre<State>, String)> {
        let hash = content_hash(bytes);
        let cached = self
            .inner
            .components
            .lock()
            .ok()
            .and_then(|c| c.get(&hash).cloned());
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.inner.engine, bytes).map_err(|e| Error::Invalid {
                    model: model.to_owned(),
                    reason: format!("{e:#}"),
                })?;
                if let Ok(mut cache) = self.inner.components.lock() {
                    cache.insert(hash.clone(), c.clone());
                }
                c
            }
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| unknown_import(model, &e))?;
        let pre = AdapterPre::new(pre).map_err(|e| Error::NotAnAdapter {
            model: model.to_owned(),
            reason: format!("{e:#}"),
        })?;
        Ok((pre, hash))
    }

    /// Components compiled so far.
    pub fn cached_components(&self) -> usize {
        self.inner.components.lock().map_or(0, |c| c.len())
    }
}

/// The import a failed pre-link names (wasmtime quotes it in backticks), with its message.
fn unknown_import(model: &str, e: &wasmtime::Error) -> Error {
    let message = format!("{e:#}");
    let import = message
        .split('`')
        .nth(1)
        .map_or_else(|| message.clone(), str::to_owned);
    Error::UnknownImport {
        model: model.to_owned(),
        import,
    }
}
