//! The OpenAI-compatible adapter built as a component (`adapters/openai`) against a local
//! server speaking the OpenAI chat-completions protocol: it reaches the provider only through
//! the host's egress, which adds the key and enforces the allowlist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use triad_models::{ModelAdapter, ModelRequest, Secret};
use triad_testkit::{Behaviour, FakeProvider, Flavor};
use triad_wasm::{Egress, HostConfig, OPENAI_ADAPTER, WasmHost, WasmModel};

const KEY: &str = "sk-test-secret-0123456789";

async fn adapter(fake: &FakeProvider, allowed: &str) -> WasmModel {
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let egress = Egress::new(
        vec![allowed.to_owned()],
        Some(("authorization".into(), Secret::new(format!("Bearer {KEY}")))),
    )
    .unwrap();
    let settings = BTreeMap::from([
        ("base-url".to_owned(), fake.base_url()),
        ("model".to_owned(), "provider-model".to_owned()),
    ]);
    WasmModel::load_with_settings(
        &host,
        "remote",
        vec!["US-EAST".into()],
        OPENAI_ADAPTER,
        egress,
        settings,
    )
    .await
    .unwrap()
}

fn request() -> ModelRequest {
    ModelRequest {
        prompt: "What is 2+2?".into(),
        max_tokens: 64,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn the_component_speaks_the_openai_protocol_through_the_host() {
    let fake = FakeProvider::start(Flavor::OpenAi).await;
    let model = adapter(&fake, "127.0.0.1").await;
    fake.push(Behaviour::Answer(Some("4".into())));
    let r = model.invoke(&request()).await.unwrap();
    assert_eq!(r.output, "4");
    assert_eq!((r.input_tokens, r.output_tokens), (3, 1));
    // The host added the key; the component never had it.
    fake.requests()[0].assert_openai_call(KEY, "provider-model", 64, "What is 2+2?");
    assert_eq!(model.capabilities().zones, ["US-EAST"]);
}

#[tokio::test]
async fn provider_errors_keep_their_retry_class_and_never_show_the_key() {
    let fake = FakeProvider::start(Flavor::OpenAi).await;
    let model = adapter(&fake, "127.0.0.1").await;
    for (code, retryable) in [(429, true), (503, true), (401, false), (400, false)] {
        fake.push(Behaviour::Status {
            code,
            retry_after: None,
            message: "provider says no".into(),
        });
        let e = model.invoke(&request()).await.unwrap_err();
        assert_eq!(e.retryable, retryable, "{code}: {e:?}");
        assert!(
            e.message.contains(&code.to_string()) && e.message.contains("provider says no"),
            "{e:?}"
        );
        assert!(!format!("{e:?}").contains(KEY));
    }
    // The provider's Retry-After and status reach the executor.
    fake.push(Behaviour::Status {
        code: 429,
        retry_after: Some("3".into()),
        message: "slow down".into(),
    });
    let e = model.invoke(&request()).await.unwrap_err();
    assert_eq!(
        (e.status, e.retry_after),
        (Some(429), Some(Duration::from_secs(3)))
    );
    fake.push(Behaviour::Malformed);
    let e = model.invoke(&request()).await.unwrap_err();
    assert!(e.retryable, "{e:?}");
}

#[tokio::test]
async fn a_provider_outside_the_allowlist_is_never_called() {
    let fake = FakeProvider::start(Flavor::OpenAi).await;
    let model = adapter(&fake, "api.openai.com").await;
    let e = model.invoke(&request()).await.unwrap_err();
    assert!(e.message.contains("denied"), "{e:?}");
    assert!(fake.requests().is_empty());
    assert_eq!(
        model
            .egress()
            .stats
            .denied
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
