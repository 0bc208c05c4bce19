//! The model market's decisions, free of I/O (docs/market.md):
//! - [`matching`]: which specialty a task's text asks for when the task names none — a
//!   TF-IDF nearest-centroid classifier built from a labelled set kept in the repository,
//!   behind the [`SpecialtyClassifier`] trait so an embedding model can replace it;
//! - [`auction`]: the bidding market's rule and each bidder's standing;
//! - [`estimate`]: what a workflow will cost before it runs — the expected cost on the
//!   model the router would choose, and the worst case (every attempt, any fallback) that a
//!   hard budget must cover;
//! - [`costs`]: that worst case per attempt, as the workflow aggregate's cost model for
//!   credits reservations;
//! - [`ledger`]: the TRIAD credits ledger's rules — issue, reserve, settle, never transfer;
//! - [`registry`]: what a remote model's self-registration must satisfy, and the registry
//!   view folded from `triad.models`.

pub mod auction;
pub mod costs;
pub mod estimate;
pub mod ledger;
pub mod matching;
pub mod registry;

pub use costs::MarketCosts;
pub use estimate::{Estimate, TaskEstimate, estimate};
pub use matching::{Inference, SpecialtyClassifier, TfIdfClassifier};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("labelled set line {line}: {message}")]
    LabelledSet { line: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
