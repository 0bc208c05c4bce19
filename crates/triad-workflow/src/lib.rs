//! The workflow definition language (the seed's DSL): a Rust builder and a JSON document
//! format for the same thing, validated before anything is written.
//!
//! ```
//! use triad_workflow::{Task, Workflow, Limits, Context};
//! let wf = Workflow::new("research")
//!     .zones(["US-EAST"])
//!     .task(Task::new("generate_questions", "Generate 3 questions about {topic}"))
//!     .task(Task::new("answer", "Answer: {generate_questions.output}").depends_on(["generate_questions"]));
//! let ctx = Context { zones: &["US-EAST".into()], groups: &[], models: None, limits: Limits::default() };
//! assert!(wf.validate(&ctx).is_ok());
//! ```

pub mod aggregate;
mod dag;
mod model;
mod template;
mod validate;

pub use dag::{depth, ready};
pub use model::{RetryPolicy, Task, Workflow};
pub use template::{Reference, fill, references};
pub use validate::{Context, Limits, ModelOffer, ValidationError, ValidationErrors, valid_account};
