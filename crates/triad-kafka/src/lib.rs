//! Kafka plumbing: client settings, the topic catalogue and `topics ensure`, a producer that
//! waits for `acks=all`, consumers that store offsets only after the work is committed, and
//! the dead-letter path.

pub mod client;
pub mod consume;
pub mod dlq;
mod error;
pub mod pool;
pub mod produce;
pub mod tail;
pub mod topics;

pub use error::{Error, Result};

/// Microseconds since the Unix epoch, from the wall clock. Only the edge (commands, dead
/// letters) reads the clock; processors take time from their input records.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
