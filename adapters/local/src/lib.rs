//! `triad-local`, the embedded default model, as a component of `triad:adapter/adapter`:
//! deterministic answers (`triad_local_model`), no egress, no bids.

wit_bindgen::generate!({
    path: "../../wit",
    world: "adapter",
});

struct Local;

impl Guest for Local {
    fn capabilities() -> Capabilities {
        Capabilities {
            specialties: ["arithmetic", "echo", "questions", "text"]
                .map(String::from)
                .to_vec(),
            max_context: 65_536,
            input_micros_per_1k: 0,
            output_micros_per_1k: 0,
            latency_p50_ms: 1,
        }
    }

    fn invoke(request: Request) -> Result<Response, Failure> {
        triad_local_model::complete(&request.prompt, request.max_tokens)
            .map(|c| Response {
                output: c.output,
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
            })
            .map_err(|message| Failure {
                message,
                retryable: false,
                status: None,
                retry_after_ms: None,
            })
    }

    fn bid(_request: Request) -> Option<Bid> {
        None
    }
}

export!(Local);
