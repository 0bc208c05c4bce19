//! Stand-ins for the remote model providers, which tests cannot reach: a local HTTP/1.1
//! server that speaks the OpenAI chat-completions or the Anthropic Messages wire format,
//! with scripted failures (status codes with `Retry-After`, malformed bodies, slow
//! responses, connection resets). It is written on raw TCP so a test can break the
//! connection exactly where a real network would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod swtpm;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// A well-formed answer: the given text, or `answer: <prompt>` when `None`.
    Answer(Option<String>),
    /// An error status with the provider's error body and an optional `Retry-After`.
    Status {
        code: u16,
        retry_after: Option<String>,
        message: String,
    },
    /// 200 with a body that is not the provider's format.
    Malformed,
    /// Waits this long, then answers.
    Slow(Duration),
    /// Reads the request and closes the connection without a response.
    Reset,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts this is the chat-completions call an OpenAI-compatible adapter makes for one
    /// user prompt, with `key` as its bearer token.
    pub fn assert_openai_call(&self, key: &str, model: &str, max_tokens: u64, prompt: &str) {
        assert_eq!(self.path, "/v1/chat/completions");
        assert_eq!(
            self.header("authorization"),
            Some(format!("Bearer {key}").as_str())
        );
        assert_eq!(self.body["model"], model);
        assert_eq!(self.body["max_tokens"], max_tokens);
        assert_eq!(self.body["messages"][0]["role"], "user");
        assert_eq!(self.body["messages"][0]["content"], prompt);
    }
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Behaviour>,
    default: Option<Behaviour>,
    requests: Vec<Recorded>,
    /// The status `GET /v1/models` (the adapters' health probe) answers with; None: 200.
    health_status: Option<u16>,
    health_probes: usize,
}

/// A running fake provider. Behaviours queued with [`FakeProvider::push`] are used in order;
/// then the default ([`FakeProvider::set_default`], initially `Answer(None)`).
#[derive(Debug, Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    pub flavor: Flavor,
    state: Arc<Mutex<State>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl FakeProvider {
    pub async fn start(flavor: Flavor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (s, a) = (state.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, a) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, flavor, s, a).await;
                });
            }
        });
        Self {
            addr,
            flavor,
            state,
            arrived,
        }
    }

    /// Waits until at least `n` requests arrived (woken by each arrival, no polling).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.requests().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} requests within {timeout:?}"));
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, b: Behaviour) {
        self.state.lock().unwrap().script.push_back(b);
    }

    pub fn set_default(&self, b: Behaviour) {
        self.state.lock().unwrap().default = Some(b);
    }

    /// Health probes (`GET /v1/models`) get this error status from now on; `None` heals.
    pub fn set_health(&self, status: Option<u16>) {
        self.state.lock().unwrap().health_status = status;
    }

    /// How many health probes arrived.
    pub fn health_probes(&self) -> usize {
        self.state.lock().unwrap().health_probes
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn prompt_of(body: &Value) -> String {
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn answer_body(flavor: Flavor, body: &Value, text: &str) -> Value {
    let input = prompt_of(body).split_whitespace().count();
    let output = text.split_whitespace().count();
    match flavor {
        Flavor::OpenAi => json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
        }),
        Flavor::Anthropic => json!({
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": input, "output_tokens": output}
        }),
    }
}

fn error_body(flavor: Flavor, code: u16, message: &str) -> Value {
    match flavor {
        Flavor::OpenAi => {
            json!({"error": {"message": message, "type": if code == 429 { "rate_limit_exceeded" } else { "server_error" }, "code": code}})
        }
        Flavor::Anthropic => {
            let kind = match code {
                401 => "authentication_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    flavor: Flavor,
    state: Arc<Mutex<State>>,
    arrived: Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    loop {
        let Some((path, headers, body)) = read_request(&mut stream).await? else {
            return Ok(());
        };
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if path == "/v1/models" {
            // Health checks are not scripted or recorded as requests; they answer 200 unless
            // `set_health` says otherwise.
            let status = {
                let mut s = state.lock().unwrap();
                s.health_probes += 1;
                s.health_status
            };
            let (code, payload) = match status {
                None => (
                    200,
                    json!({"object": "list", "data": [{"id": "fake", "object": "model"}]})
                        .to_string(),
                ),
                Some(code) => (code, error_body(flavor, code, "unavailable").to_string()),
            };
            let head = format!(
                "HTTP/1.1 {code} Status\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                payload.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(payload.as_bytes()).await?;
            continue;
        }
        let behaviour = {
            let mut s = state.lock().unwrap();
            s.requests.push(Recorded {
                path: path.clone(),
                headers,
                body: body.clone(),
            });
            s.script
                .pop_front()
                .or_else(|| s.default.clone())
                .unwrap_or(Behaviour::Answer(None))
        };
        arrived.notify_waiters();
        let (status, extra, payload) = match behaviour {
            Behaviour::Answer(text) => {
                let text = text.unwrap_or_else(|| format!("answer: {}", prompt_of(&body)));
                (200, vec![], answer_body(flavor, &body, &text).to_string())
            }
            Behaviour::Slow(d) => {
                tokio::time::sleep(d).await;
                let text = format!("answer: {}", prompt_of(&body));
                (200, vec![], answer_body(flavor, &body, &text).to_string())
            }
            Behaviour::Status {
                code,
                retry_after,
                message,
            } => {
                let extra = retry_after
                    .map(|r| ("retry-after".to_owned(), r))
                    .into_iter()
                    .collect();
                (code, extra, error_body(flavor, code, &message).to_string())
            }
            Behaviour::Malformed => (200, vec![], "{\"choices\": \"not a list\"".to_owned()),
            Behaviour::Reset => return Ok(()),
        };
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            payload.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(payload.as_bytes()).await?;
        stream.flush().await?;
    }
}

type Request = (String, Vec<(String, String)>, Vec<u8>);

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((path, headers, body)))
}
