//! The executor of one sovereignty zone. It consumes `triad.tasks.<zone>` in consumer group
//! `<prefix>-executor-<zone>` with at most `executor.max_in_flight` requests in progress
//! ([`triad_kafka::pool`]), and for each request:
//!
//! 1. skips it when the attempt is already running or done here, or the workflow was
//!    cancelled (the broadcast `triad.control` topic);
//! 2. fills the prompt template from the dependencies' outputs — here, inside the zone;
//! 3. ranks the models ([`triad_router::rank`]) and calls them best first: each model up to
//!    `retries_per_model` times with full-jitter backoff honouring `Retry-After`, skipping
//!    models whose circuit breaker is open, falling back to the next model, failing fast on
//!    non-retryable errors (400/401/403) for that model;
//! 4. reports a `TaskResultReported` with the routing decision and every model call (its
//!    spend) to the inbox, and only then lets the offset be stored.
//!
//! A cancelled workflow's calls in flight are aborted. Component versions registered on the
//! compacted `triad.models` topic replace a `wasm` model's code while it serves (hot swap);
//! start-up reads that topic before taking work. Remote models that registered themselves
//! there join the catalogue after a second policy check, and leave on a tombstone (module
//! `remote`); those that send heartbeats (`triad.model-health`) are judged on them. Every breaker transition is published
//! to `triad.executor-status` and counted; heartbeats there tell the processor the zone is
//! alive.

mod control;
pub mod metrics;
mod registry;
mod remote;
mod run;

pub use run::{Options, run};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error(transparent)]
    Codec(#[from] triad_codec::Error),
    #[error("zone {zone} is not in policy.zones ({known})")]
    UnknownZone { zone: String, known: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
