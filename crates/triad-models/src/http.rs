//! What the HTTP adapters share: the client, and turning transport failures and error
//! responses into [`ModelError`]s that say whether a retry can help.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::ModelError;

pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
}

/// A failure before a complete response: always retryable (the next try may reach a healthy
/// replica). The message names the kind of failure, never the URL's credentials or headers.
pub fn transport(model: &str, e: reqwest::Error) -> ModelError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response body broke off"
    } else {
        "the request failed"
    };
    ModelError::retryable(format!("{model}: {kind}: {}", e.without_url()))
}

/// Sends a prepared request and returns the body of a 2xx response; any other outcome is a
/// [`ModelError`] saying whether a retry can help. Both HTTP adapters call their provider
/// through this, so the error mapping is one piece of code.
pub async fn send(model: &str, request: reqwest::RequestBuilder) -> Result<String, ModelError> {
    let response = request.send().await.map_err(|e| transport(model, e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| transport(model, e))?;
    if !(200..300).contains(&status) {
        return Err(status_error(model, status, &headers, &error_detail(&text)));
    }
    Ok(text)
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An error status: 408, 409, 429 and 5xx (and Anthropic's 529) are worth retrying; other
/// 4xx (bad request, bad key, forbidden, unknown model) fail fast. `detail` is the provider's
/// own error message when its body had one.
pub fn status_error(model: &str, status: u16, headers: &HeaderMap, detail: &str) -> ModelError {
    let retryable = matches!(status, 408 | 409 | 429) || status >= 500;
    let detail: String = detail.chars().take(300).collect();
    ModelError {
        message: format!("{model}: HTTP {status}: {detail}"),
        retryable,
        retry_after: retry_after(headers),
        status: Some(status),
    }
}

/// The `error.message` of an OpenAI- or Anthropic-style error body, else the raw text.
pub fn error_detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("message").or(Some(e)))
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_split_into_retryable_and_fatal() {
        let h = HeaderMap::new();
        for s in [408, 429, 500, 503, 529] {
            assert!(status_error("m", s, &h, "").retryable, "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!status_error("m", s, &h, "").retryable, "{s}");
        }
        assert_eq!(
            error_detail(r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#),
            "bad key"
        );
        assert_eq!(error_detail("plain"), "plain");
    }
}
