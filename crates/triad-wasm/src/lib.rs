//! WebAssembly model adapters: components of the `triad:adapter@0.1.0` world (`wit/`),
//! hosted in wasmtime (docs/wasm_adapter_spec.md, ADR 0012).
//!
//! - [`WasmHost`] owns the engine: the component model, a pooling allocator so each call gets
//!   a fresh instance from a pre-reserved slot, epoch interruption driven by a ticker thread,
//!   and a cache of compiled components by content hash.
//! - [`WasmModel`] is a component loaded for one model id: a [`triad_models::ModelAdapter`]
//!   like any other. Each call instantiates it afresh (nothing survives between tasks) with a
//!   memory cap, a deadline from the task's timeout (the guest yields to the async runtime
//!   at every epoch tick, so a looping guest never pins a worker thread), a deny-all WASI
//!   context, and `host.egress` checked against the model's host allowlist.
//!   [`WasmModel::swap`] replaces the component: new calls use the new one, calls in flight
//!   finish on the old.
//! - A component whose imports the host does not provide is refused when loaded, naming the
//!   import.

mod catalogue;
mod egress;
mod host;
mod model;

pub use catalogue::load_catalogue;
pub use egress::{Egress, EgressStats};
pub use host::{HostConfig, WasmHost};
pub use model::{Version, WasmModel};

/// The embedded default model, `triad-local`, as a component (built from `adapters/local`).
pub const LOCAL_ADAPTER: &[u8] = include_bytes!(env!("TRIAD_LOCAL_ADAPTER_WASM"));

/// An OpenAI-compatible chat-completions adapter as a component (`adapters/openai`): it
/// calls out only through the host's egress. Load it with `base-url` and `model` settings.
pub const OPENAI_ADAPTER: &[u8] = include_bytes!(env!("TRIAD_OPENAI_ADAPTER_WASM"));

/// A component that misbehaves on request (`adapters/testbed`), for sandbox tests and
/// benchmarks.
pub const TESTBED_ADAPTER: &[u8] = include_bytes!(env!("TRIAD_TESTBED_ADAPTER_WASM"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wasmtime engine: {0}")]
    Engine(String),
    #[error("model {model}: not a valid component: {reason}")]
    Invalid { model: String, reason: String },
    #[error(
        "model {model}: the component imports {import}, which the host does not provide \
             (it offers triad:adapter/host@0.1.0 and deny-all WASI 0.2)"
    )]
    UnknownImport { model: String, import: String },
    #[error("model {model}: the component does not export the triad:adapter world: {reason}")]
    NotAnAdapter { model: String, reason: String },
    #[error("model {model}: {reason}")]
    Call { model: String, reason: String },
    #[error("model {model}: reading the component {path}: {reason}")]
    Component {
        model: String,
        path: String,
        reason: String,
    },
    #[error("the model catalogue: {0}")]
    Catalogue(String),
    #[error("building the egress HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SHA-256 of `bytes`, hex: a component's identity in the cache and in the logs.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
