//! The API's Prometheus counters, served on `GET /metrics`: requests by route template,
//! method and status, and the live event streams (SSE and subscriptions) open now.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// (route template, method, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    streams_open: AtomicI64,
}

impl ApiMetrics {
    pub fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP triad_api_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE triad_api_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "triad_api_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP triad_api_streams_open Event streams (SSE and GraphQL subscriptions) open now.\n");
        out.push_str("# TYPE triad_api_streams_open gauge\n");
        let _ = writeln!(
            out,
            "triad_api_streams_open {}",
            self.streams_open.load(Ordering::Relaxed)
        );
        out
    }
}

/// Counts a stream in `triad_api_streams_open` while it lives.
#[derive(Debug)]
pub struct StreamOpen(Arc<ApiMetrics>);

impl StreamOpen {
    pub fn new(metrics: Arc<ApiMetrics>) -> Self {
        metrics.stream_opened();
        Self(metrics)
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// Counts each request under its route template (never the raw path: ids would explode
/// the label set).
pub async fn count(
    State(metrics): State<std::sync::Arc<ApiMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    if let Ok(mut m) = metrics.requests.lock() {
        *m.entry((route, method, response.status().as_u16()))
            .or_default() += 1;
    }
    response
}

pub async fn serve(State(metrics): State<std::sync::Arc<ApiMetrics>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}
