//! A component of `triad:adapter/adapter` that does what its prompt says, including what a
//! hostile or broken adapter would do; the host's tests use it to prove the sandbox holds.
//!
//! | prompt | does |
//! | --- | --- |
//! | `spin` | loops forever (the host's deadline must stop it) |
//! | `grow` | allocates without bound (the memory cap must trap it) |
//! | `read-file:<path>` | reads a file through WASI (there are no preopened directories) |
//! | `connect:<host:port>` | opens a TCP socket through WASI (sockets are denied) |
//! | `env` | lists the environment (it is empty) |
//! | `egress:<url>` | GETs the URL through the host (the allowlist decides) |
//! | `egress-forged:<url>` | the same, with an `authorization` header of its own |
//! | `clock` | the host's clock, in ms |
//! | `log:<text>` | logs the text through the host, then echoes it |
//! | `count` | increments a global and returns it (1 if every call gets a fresh instance) |
//! | anything else | echoes the prompt |

wit_bindgen::generate!({
    path: "../../wit",
    world: "adapter",
});

use triad::adapter::host;

struct Testbed;

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ok(output: String) -> Result<Response, Failure> {
    Ok(Response {
        output,
        input_tokens: 1,
        output_tokens: 1,
    })
}

impl Guest for Testbed {
    fn capabilities() -> Capabilities {
        Capabilities {
            specialties: vec!["testing".to_owned()],
            max_context: 1024,
            input_micros_per_1k: 1,
            output_micros_per_1k: 2,
            latency_p50_ms: 5,
        }
    }

    fn invoke(request: Request) -> Result<Response, Failure> {
        let prompt = request.prompt.as_str();
        if prompt == "spin" {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if prompt == "grow" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if let Some(path) = prompt.strip_prefix("read-file:") {
            return ok(match std::fs::read(path) {
                Ok(bytes) => format!("read {} bytes", bytes.len()),
                Err(e) => format!("denied: {e}"),
            });
        }
        if let Some(addr) = prompt.strip_prefix("connect:") {
            return ok(match std::net::TcpStream::connect(addr) {
                Ok(_) => "connected".to_owned(),
                Err(e) => format!("denied: {e}"),
            });
        }
        if prompt == "env" {
            return ok(format!("{} variables", std::env::vars().count()));
        }
        let forged = prompt.strip_prefix("egress-forged:");
        if let Some(url) = prompt.strip_prefix("egress:").or(forged) {
            let headers = match forged {
                Some(_) => vec![("Authorization".to_owned(), "Bearer forged".to_owned())],
                None => Vec::new(),
            };
            let request = host::HttpRequest {
                method: "GET".to_owned(),
                url: url.to_owned(),
                headers,
                body: Vec::new(),
            };
            return match host::egress(&request) {
                Ok(r) => ok(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
                Err(e) => Err(Failure {
                    message: e,
                    retryable: false,
                    status: None,
                    retry_after_ms: None,
                }),
            };
        }
        if prompt == "count" {
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            return ok(n.to_string());
        }
        if prompt == "clock" {
            return ok(host::now_ms().to_string());
        }
        if let Some(text) = prompt.strip_prefix("log:") {
            host::log(host::Level::Info, text);
            return ok(text.to_owned());
        }
        ok(prompt.to_owned())
    }

    fn bid(request: Request) -> Option<Bid> {
        Some(Bid {
            price_micros: i64::try_from(request.prompt.len()).unwrap_or(i64::MAX),
            latency_ms: 5,
            confidence: 0.5,
        })
    }
}

export!(Testbed);
