//! The Anthropic Messages API (`POST {base}/v1/messages`, `x-api-key`, `anthropic-version`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http;
use crate::{Fingerprint, ModelAdapter, ModelError, ModelRequest, ModelResponse, Secret};

/// The API version this adapter speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug)]
pub struct Anthropic {
    fingerprint: Fingerprint,
    url: String,
    model: String,
    key: Secret,
    client: reqwest::Client,
    /// The model's own per-call limit (`models.<id>.timeout_ms`); a call gets the shorter of
    /// this and what is left of the task's timeout.
    timeout: Duration,
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: [Message<'a>; 1],
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct MessagesResponse {
    content: Vec<ContentBlock>,
    usage: Usage,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    input_tokens: i64,
    output_tokens: i64,
}

impl Anthropic {
    pub fn new(
        fingerprint: Fingerprint,
        base_url: &str,
        model: String,
        key: Secret,
        timeout: Duration,
    ) -> Result<Self, crate::Error> {
        Ok(Self {
            fingerprint,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            model,
            key,
            client: http::client(timeout)?,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl ModelAdapter for Anthropic {
    fn capabilities(&self) -> &Fingerprint {
        &self.fingerprint
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let id = &self.fingerprint.id;
        let body = MessagesRequest {
            model: &self.model,
            max_tokens: request.max_tokens,
            messages: [Message {
                role: "user",
                content: &request.prompt,
            }],
        };
        let request_builder = self
            .client
            .post(&self.url)
            .header("x-api-key", self.key.expose())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .timeout(request.timeout.min(self.timeout))
            .json(&body);
        let text = http::send(id, request_builder).await?;
        let parsed: MessagesResponse = serde_json::from_str(&text)
            .map_err(|e| ModelError::retryable(format!("{id}: malformed message: {e}")))?;
        let output: String = parsed
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text.as_deref())
            .collect();
        Ok(ModelResponse {
            output,
            input_tokens: parsed.usage.input_tokens,
            output_tokens: parsed.usage.output_tokens,
        })
    }
}
