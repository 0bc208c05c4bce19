//! The HTTP adapters against local servers speaking the providers' wire formats.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use triad_config::{ModelConfig, ModelKind};
use triad_models::{Catalogue, ModelAdapter, ModelRequest};
use triad_testkit::{Behaviour, FakeProvider, Flavor};

const KEY: &str = "sk-test-secret-0123456789";

async fn adapter(flavor: Flavor) -> (FakeProvider, Arc<dyn ModelAdapter>) {
    let fake = FakeProvider::start(flavor).await;
    let mut m = ModelConfig::local();
    m.kind = match flavor {
        Flavor::OpenAi => ModelKind::Openai,
        Flavor::Anthropic => ModelKind::Anthropic,
    };
    m.base_url = Some(fake.base_url());
    m.model = Some("provider-model".into());
    m.api_key_env = Some("TEST_KEY".into());
    m.zones = vec!["US-EAST".into()];
    m.input_micros_per_1k = 1000;
    let catalogue = Catalogue::from_config(&BTreeMap::from([("remote".to_owned(), m)]), |v| {
        (v == "TEST_KEY").then(|| KEY.to_owned())
    })
    .unwrap();
    (fake, catalogue.models["remote"].clone())
}

fn request(timeout_ms: u64) -> ModelRequest {
    ModelRequest {
        prompt: "What is 2+2?".into(),
        max_tokens: 64,
        timeout: Duration::from_millis(timeout_ms),
    }
}

#[tokio::test]
async fn openai_wire_format_round_trip() {
    let (fake, model) = adapter(Flavor::OpenAi).await;
    fake.push(Behaviour::Answer(Some("4".into())));
    let r = model.invoke(&request(5_000)).await.unwrap();
    assert_eq!(r.output, "4");
    assert_eq!((r.input_tokens, r.output_tokens), (3, 1));
    fake.requests()[0].assert_openai_call(KEY, "provider-model", 64, "What is 2+2?");
}

#[tokio::test]
async fn anthropic_wire_format_round_trip() {
    let (fake, model) = adapter(Flavor::Anthropic).await;
    fake.push(Behaviour::Answer(Some("4".into())));
    let r = model.invoke(&request(5_000)).await.unwrap();
    assert_eq!(r.output, "4");
    assert_eq!((r.input_tokens, r.output_tokens), (3, 1));
    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.body["max_tokens"], 64);
}

#[tokio::test]
async fn rate_limits_are_retryable_and_carry_retry_after() {
    for flavor in [Flavor::OpenAi, Flavor::Anthropic] {
        let (fake, model) = adapter(flavor).await;
        fake.push(Behaviour::Status {
            code: 429,
            retry_after: Some("3".into()),
            message: "slow down".into(),
        });
        let e = model.invoke(&request(5_000)).await.unwrap_err();
        assert!(e.retryable, "{flavor:?}");
        assert_eq!(e.status, Some(429));
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert!(e.message.contains("slow down"), "{}", e.message);
    }
}

#[tokio::test]
async fn auth_and_request_errors_fail_fast_without_leaking_the_key() {
    for (flavor, code) in [
        (Flavor::OpenAi, 401),
        (Flavor::Anthropic, 403),
        (Flavor::OpenAi, 400),
    ] {
        let (fake, model) = adapter(flavor).await;
        fake.push(Behaviour::Status {
            code,
            retry_after: None,
            message: "invalid x-api-key".into(),
        });
        let e = model.invoke(&request(5_000)).await.unwrap_err();
        assert!(!e.retryable, "{flavor:?} {code}");
        assert!(!e.message.contains(KEY), "{}", e.message);
        assert!(!format!("{e:?}").contains(KEY));
    }
}

#[tokio::test]
async fn overload_malformed_slow_and_reset_are_retryable() {
    let (fake, model) = adapter(Flavor::Anthropic).await;
    fake.push(Behaviour::Status {
        code: 529,
        retry_after: None,
        message: "Overloaded".into(),
    });
    let e = model.invoke(&request(5_000)).await.unwrap_err();
    assert!(e.retryable && e.status == Some(529), "{e:?}");

    let (fake, model) = adapter(Flavor::OpenAi).await;
    fake.push(Behaviour::Malformed);
    let e = model.invoke(&request(5_000)).await.unwrap_err();
    assert!(e.retryable && e.message.contains("malformed"), "{e:?}");

    fake.push(Behaviour::Slow(Duration::from_secs(5)));
    let e = model.invoke(&request(200)).await.unwrap_err();
    assert!(e.retryable && e.message.contains("timed out"), "{e:?}");

    fake.push(Behaviour::Reset);
    let e = model.invoke(&request(5_000)).await.unwrap_err();
    assert!(e.retryable && e.status.is_none(), "{e:?}");

    // And the next call, with nothing scripted, succeeds.
    assert!(model.invoke(&request(5_000)).await.is_ok());
}
