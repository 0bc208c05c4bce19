//! The sovereignty kernel: payloads sealed so that only nodes enrolled in the allowed zones
//! can open them (`docs/sovereignty_kernel.md`, threat model in `docs/threat_model.md`).
//!
//! - [`hpke`]: RFC 9180 base mode, DHKEM(P-256, HKDF-SHA256), AES-256-GCM, with the
//!   recipient's DH step behind a trait so a TPM can do it.
//! - [`keys`]: node keys and the `file` key store.
//! - [`directory`]: which keys are enrolled in which zone (a fold of changes).
//! - [`kernel`]: one node's kernel — directory, workflow key records, `seal` / `open`.
//! - [`envelope`]: workflow keys (public-key work once per workflow and zone set) and
//!   per-payload envelopes (symmetric only).
//!
//! No network or Kafka I/O here; the file key store touches only its own directory.

pub mod custody;
pub mod directory;
pub mod envelope;
pub mod hpke;
pub mod kernel;
pub mod keys;
pub mod merkle;
pub mod signing;
pub mod tpm;

pub use directory::{
    DirectoryChange, DirectoryWriter, KeyDirectory, KeyState, NodeEntry, SignedChange,
    SignedDirectory,
};
pub use envelope::{
    Binding, Envelope, FORMAT, Opener, Role, SEALED_PREFIX, WorkflowKey, WorkflowKeyRecord,
    WrappedKey,
};
pub use kernel::{Expect, Kernel, Opened};
pub use keys::{
    FileKeyStore, NodeKey, SoftwareKey, hex, key_id, parse_public_hex, public_hex, unhex,
};
pub use tpm::TpmKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "sovereignty violation: node {node} in zone {zone} may not open a payload sealed to {}: {reason}",
        envelope_zones.join(", ")
    )]
    SovereigntyViolation {
        node: String,
        zone: String,
        envelope_zones: Vec<String>,
        reason: String,
    },
    #[error("envelope {envelope_id} does not open: {reason}")]
    Tampered { envelope_id: String, reason: String },
    #[error("cannot unwrap the workflow key: {reason}")]
    Unwrap { reason: String },
    #[error("no key is enrolled in zone {zone}: nothing there could open the payloads")]
    NoRecipients { zone: String },
    #[error("node key: {reason}")]
    Key { reason: String },
    #[error("key directory: {reason}")]
    Directory { reason: String },
    #[error("unsupported envelope: {reason}")]
    Format { reason: String },
    #[error(
        "workflow key {workflow_key_id} is unknown here (its record has not arrived yet, or the workflow was crypto-shredded)"
    )]
    UnknownWorkflowKey { workflow_key_id: String },
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
