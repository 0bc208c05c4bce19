//! `host.egress`: HTTP calls a component asks the host to make, allowed only to the hosts on
//! the model's allowlist (the sovereignty policy's hosts for the model's zone).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use triad_models::Secret;

use crate::model::bindings::triad::adapter::host::{HttpRequest, HttpResponse};

/// A response body larger than this is refused (a model's answer is far smaller).
const MAX_BODY: usize = 16 << 20;

/// Counts of egress decisions for one model (the sovereignty issue records each as an event).
#[derive(Debug, Default)]
pub struct EgressStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
}

/// Where one model's component may call out to, and with which credential.
#[derive(Debug)]
pub struct Egress {
    /// Exact host names, lower case. Empty: no egress at all.
    allowed_hosts: Vec<String>,
    client: reqwest::Client,
    /// A header the host adds to every allowed call (`authorization: Bearer …`): the
    /// component never sees the key.
    credential: Option<(String, Secret)>,
    pub stats: EgressStats,
}

impl Egress {
    /// No egress: every call is denied.
    pub fn none() -> crate::Result<Self> {
        Self::new(Vec::new(), None)
    }

    pub fn new(
        allowed_hosts: Vec<String>,
        credential: Option<(String, Secret)>,
    ) -> crate::Result<Self> {
        Ok(Self {
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            credential,
            stats: EgressStats::default(),
        })
    }

    pub fn allowed_hosts(&self) -> &[String] {
        &self.allowed_hosts
    }

    /// Performs `request` if its host is allowed, within the call's `deadline`.
    pub(crate) async fn send(
        &self,
        model: &str,
        request: HttpRequest,
        deadline: tokio::time::Instant,
    ) -> Result<HttpResponse, String> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| format!("egress: {:?} is not a URL: {e}", request.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "egress: scheme {} is not http or https",
                url.scheme()
            ));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.contains(&host) {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                model,
                server.address = %host,
                "egress denied: the host is not on the model's allowlist"
            );
            return Err(format!(
                "egress to {host} denied: not on the allowlist of model {model}"
            ));
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("egress: {:?} is not an HTTP method", request.method))?;
        let timeout = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(1));
        let mut call = self
            .client
            .request(method, url)
            .timeout(timeout)
            .body(request.body);
        for (name, value) in &request.headers {
            // The credential's header is the host's alone: a component cannot replace or
            // double it.
            if self
                .credential
                .as_ref()
                .is_some_and(|(c, _)| c.eq_ignore_ascii_case(name))
            {
                continue;
            }
            call = call.header(name, value);
        }
        if let Some((name, secret)) = &self.credential {
            call = call.header(name, secret.expose());
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        // Errors are reported without the request (its headers hold the credential).
        let response = call
            .send()
            .await
            .map_err(|e| format!("egress to {host}: {}", describe(e)))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(format!(
                "egress to {host}: the response is over {MAX_BODY} bytes"
            ));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("egress to {host}: reading the body: {}", describe(e)))?;
        if body.len() > MAX_BODY {
            return Err(format!(
                "egress to {host}: the response is over {MAX_BODY} bytes"
            ));
        }
        Ok(HttpResponse {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.without_url().to_string()
    }
}
