//! OpenAI-compatible chat completions (`POST {base}/v1/chat/completions`): self-hosted vLLM
//! (AetherAI), xAI (Grok) and Moonshot (Kimi) speak it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http;
use crate::{Fingerprint, Health, ModelAdapter, ModelError, ModelRequest, ModelResponse, Secret};

#[derive(Debug)]
pub struct OpenAiCompatible {
    fingerprint: Fingerprint,
    url: String,
    models_url: String,
    model: String,
    key: Option<Secret>,
    client: reqwest::Client,
    /// The model's own per-call limit (`models.<id>.timeout_ms`); a call gets the shorter of
    /// this and what is left of the task's timeout.
    timeout: Duration,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 1],
    max_tokens: u32,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
}

impl OpenAiCompatible {
    pub fn new(
        fingerprint: Fingerprint,
        base_url: &str,
        model: String,
        key: Option<Secret>,
        timeout: Duration,
    ) -> Result<Self, crate::Error> {
        let base = base_url.trim_end_matches('/');
        Ok(Self {
            fingerprint,
            url: format!("{base}/v1/chat/completions"),
            models_url: format!("{base}/v1/models"),
            model,
            key,
            client: http::client(timeout)?,
            timeout,
        })
    }

    fn authorized(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k.expose()),
            None => r,
        }
    }
}

#[async_trait::async_trait]
impl ModelAdapter for OpenAiCompatible {
    fn capabilities(&self) -> &Fingerprint {
        &self.fingerprint
    }

    async fn invoke(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let id = &self.fingerprint.id;
        let body = ChatRequest {
            model: &self.model,
            messages: [Message {
                role: "user",
                content: &request.prompt,
            }],
            max_tokens: request.max_tokens,
        };
        let request_builder = self
            .authorized(self.client.post(&self.url))
            .timeout(request.timeout.min(self.timeout))
            .json(&body);
        let text = http::send(id, request_builder).await?;
        let parsed: ChatResponse = serde_json::from_str(&text)
            .map_err(|e| ModelError::retryable(format!("{id}: malformed chat completion: {e}")))?;
        let output = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| ModelError::retryable(format!("{id}: the completion has no content")))?;
        let usage = parsed.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        });
        Ok(ModelResponse {
            output,
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        })
    }

    async fn health(&self) -> Health {
        match self
            .authorized(self.client.get(&self.models_url))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Health::Healthy,
            Ok(r) => Health::Unhealthy(format!("GET /v1/models: HTTP {}", r.status().as_u16())),
            Err(e) => Health::Unhealthy(http::transport(&self.fingerprint.id, e).message),
        }
    }
}
