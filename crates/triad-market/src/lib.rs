//! The model market's decisions, free of I/O (docs/market.md):
//! - [`matching`]: which specialty a task's text asks for when the task names none — a
//!   TF-IDF nearest-centroid classifier built from a labelled set kept in the repository,
//!   behind the [`SpecialtyClassifier`] trait so an embedding model can replace it;
//! - [`auction`]: the bidding market's rule and each bidder's standing;
//! - [`estimate`]: what a workflow will cost before it runs — the expected cost on the
//!   model the router would choose, and the worst case (every attempt, any fallback) that a
//!   hard budget must cover.

pub mod auction;
pub mod estimate;
pub mod matching;

pub use estimate::{Estimate, TaskEstimate, estimate};
pub use matching::{Inference, SpecialtyClassifier, TfIdfClassifier};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("labelled set line {line}: {message}")]
    LabelledSet { line: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
