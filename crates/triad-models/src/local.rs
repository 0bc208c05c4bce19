//! The embedded default model, run natively: no key, no network, deterministic. Its answers
//! are `triad_local_model`'s, the same code the `triad-local` WebAssembly component runs.

use crate::{Fingerprint, ModelAdapter, ModelError, ModelRequest, ModelResponse};

pub use triad_local_model::respond;

#[derive(Debug)]
pub struct LocalModel {
    fingerprint: Fingerprint,
}

impl LocalModel {
    pub fn new(fingerprint: Fingerprint) -> Self {
        Self { fingerprint }
    }
}

#[async_trait::async_trait]
impl ModelAdapter for LocalModel {
    fn capabilities(&self) -> &Fingerprint {
        &self.fingerprint
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let c = triad_local_model::complete(&request.prompt, request.max_tokens)
            .map_err(ModelError::fatal)?;
        Ok(ModelResponse {
            output: c.output,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
        })
    }
}
