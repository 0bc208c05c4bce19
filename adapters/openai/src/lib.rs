//! An OpenAI-compatible adapter (chat completions: vLLM, xAI, Moonshot…) as a component of
//! `triad:adapter/adapter`. It reaches the provider only through `host.egress`, so the host
//! decides where it may go and adds the API key; the component never sees the key.
//!
//! Settings: `base-url` (required; `/v1/chat/completions` is appended) and `model` (the
//! provider's model name).

wit_bindgen::generate!({
    path: "../../wit",
    world: "adapter",
});

use serde_json::{Value, json};
use triad::adapter::host;

struct OpenAi;

fn failure(message: String, retryable: bool) -> Failure {
    Failure {
        message,
        retryable,
        status: None,
        retry_after_ms: None,
    }
}

/// A provider's error response: its status, its message, and its `Retry-After` when that is
/// a number of seconds (the form providers send).
fn provider_failure(reply: &host::HttpResponse, retryable: bool) -> Failure {
    let retry_after_ms = reply
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .map(|seconds| seconds.saturating_mul(1000));
    Failure {
        message: error_message(reply.status, &reply.body),
        retryable,
        status: Some(reply.status),
        retry_after_ms,
    }
}

/// The provider's error message from an error body, or the status alone.
fn error_message(status: u16, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
    match detail {
        Some(m) => format!("HTTP {status}: {m}"),
        None => format!("HTTP {status}"),
    }
}

impl Guest for OpenAi {
    fn capabilities() -> Capabilities {
        Capabilities {
            specialties: ["general", "reasoning", "code", "text"]
                .map(String::from)
                .to_vec(),
            max_context: 32_768,
            input_micros_per_1k: 150,
            output_micros_per_1k: 600,
            latency_p50_ms: 800,
        }
    }

    fn invoke(request: Request) -> Result<Response, Failure> {
        let base = host::setting("base-url")
            .ok_or_else(|| failure("the model has no base-url setting".to_owned(), false))?;
        let model = host::setting("model").unwrap_or_else(|| "default".to_owned());
        let body = json!({
            "model": model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
        });
        let call = host::HttpRequest {
            method: "POST".to_owned(),
            url: format!("{}/v1/chat/completions", base.trim_end_matches('/')),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
        };
        // A refused or failed egress (allowlist, connection, deadline) may pass on another
        // attempt or model; the host has already recorded a denial.
        let reply = host::egress(&call).map_err(|e| failure(e, true))?;
        match reply.status {
            200..=299 => {}
            408 | 409 | 429 | 500..=599 => return Err(provider_failure(&reply, true)),
            _ => return Err(provider_failure(&reply, false)),
        }
        let answer: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| failure(format!("the provider's answer is not JSON: {e}"), true))?;
        let output = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                failure(
                    "the provider's answer has no choices[0].message.content".to_owned(),
                    true,
                )
            })?
            .to_owned();
        Ok(Response {
            output,
            input_tokens: answer["usage"]["prompt_tokens"].as_i64().unwrap_or(0),
            output_tokens: answer["usage"]["completion_tokens"].as_i64().unwrap_or(0),
        })
    }

    fn bid(_request: Request) -> Option<Bid> {
        None
    }
}

export!(OpenAi);
