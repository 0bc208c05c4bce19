//! The registry against the real broker: Confluent REST behaviour, `schema_registry_converter`
//! round trips, and state that survives a restart with the same ids. Each test uses its own
//! `_schemas` topic and port, so tests are isolated from each other and from the stack's
//! registry. Needs the stack (`scripts/dev.sh up`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use triad_codec::{Codec, CodecOptions};
use triad_config::KafkaConfig;
use triad_domain::{InboxRecord, fixtures};
use triad_registry::server::{ServeOptions, serve};

struct Running {
    url: String,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

async fn start(topic: &str) -> Running {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let options = ServeOptions {
        kafka: KafkaConfig::default(),
        topic: topic.to_owned(),
    };
    let token = cancel.clone();
    let task = tokio::spawn(async move { serve(&options, listener, token).await.unwrap() });
    // Ready when it answers; the server binds before loading, so poll the API.
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client
            .get(format!("{url}/subjects"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Running { url, cancel, task };
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("registry on {url} did not become ready (is the stack up? scripts/dev.sh up)");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/vnd.schemaregistry.v1+json");
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ct, "application/vnd.schemaregistry.v1+json");
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const V1: &str = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
const BREAKS: &str = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"int"}]}"#;

#[tokio::test]
async fn rest_api_speaks_confluent() {
    let r = start(&unique("_schemas-it")).await;
    let s = unique("subject");
    use reqwest::Method as M;

    let (st, body) = call(M::GET, &format!("{}/subjects/{s}/versions", r.url), None).await;
    assert_eq!((st, body["error_code"].clone()), (404, json!(40401)));

    let (st, body) = call(
        M::POST,
        &format!("{}/subjects/{s}/versions", r.url),
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!(st, 200);
    let id1 = body["id"].as_u64().unwrap();
    // Same schema again (different whitespace): same id, no new version.
    let spaced = V1.replace(',', " ,\n ");
    let (_, body) = call(
        M::POST,
        &format!("{}/subjects/{s}/versions", r.url),
        Some(json!({"schema": spaced})),
    )
    .await;
    assert_eq!(body["id"].as_u64().unwrap(), id1);
    let (_, body) = call(M::GET, &format!("{}/subjects/{s}/versions", r.url), None).await;
    assert_eq!(body, json!([1]));

    let (st, body) = call(
        M::POST,
        &format!("{}/subjects/{s}/versions", r.url),
        Some(json!({"schema": V2})),
    )
    .await;
    assert_eq!(st, 200);
    let id2 = body["id"].as_u64().unwrap();
    assert_ne!(id1, id2);

    let (st, body) = call(
        M::POST,
        &format!("{}/subjects/{s}/versions", r.url),
        Some(json!({"schema": BREAKS})),
    )
    .await;
    assert_eq!(
        (st, body["error_code"].clone()),
        (409, json!(409)),
        "{body}"
    );

    let (st, body) = call(
        M::POST,
        &format!("{}/subjects/{s}/versions", r.url),
        Some(json!({"schema": "{nope"})),
    )
    .await;
    assert_eq!((st, body["error_code"].clone()), (422, json!(42201)));

    let (st, body) = call(
        M::GET,
        &format!("{}/subjects/{s}/versions/latest", r.url),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            body["version"].clone(),
            body["id"].clone(),
            body["subject"].clone()
        ),
        (json!(2), json!(id2), json!(s))
    );
    let (st, body) = call(M::GET, &format!("{}/subjects/{s}/versions/9", r.url), None).await;
    assert_eq!((st, body["error_code"].clone()), (404, json!(40402)));
    let (st, body) = call(M::GET, &format!("{}/schemas/ids/999999", r.url), None).await;
    assert_eq!((st, body["error_code"].clone()), (404, json!(40403)));
    let (_, body) = call(M::GET, &format!("{}/schemas/ids/{id1}", r.url), None).await;
    let schema: Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema, serde_json::from_str::<Value>(V1).unwrap());

    let (st, body) = call(
        M::POST,
        &format!("{}/subjects/{s}", r.url),
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!(
        (st, body["version"].clone(), body["id"].clone()),
        (200, json!(1), json!(id1))
    );

    let url = format!(
        "{}/compatibility/subjects/{s}/versions/latest?verbose=true",
        r.url
    );
    let (_, body) = call(M::POST, &url, Some(json!({"schema": BREAKS}))).await;
    assert_eq!(body["is_compatible"], json!(false));
    assert!(!body["messages"].as_array().unwrap().is_empty());

    // Configuration: global and per subject.
    let (_, body) = call(M::GET, &format!("{}/config/{s}", r.url), None).await;
    assert_eq!(body["error_code"], json!(40408));
    let (st, body) = call(
        M::PUT,
        &format!("{}/config/{s}", r.url),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!((st, body), (200, json!({"compatibility": "NONE"})));
    let (st, _) = call(
        M::POST,
        &format!("{}/subjects/{s}/versions", r.url),
        Some(json!({"schema": BREAKS})),
    )
    .await;
    assert_eq!(st, 200, "NONE accepts anything");
    let (st, body) = call(
        M::PUT,
        &format!("{}/config/{s}", r.url),
        Some(json!({"compatibility": "SIDEWAYS"})),
    )
    .await;
    assert_eq!((st, body["error_code"].clone()), (422, json!(42203)));

    // Soft, then hard delete.
    let (st, body) = call(
        M::DELETE,
        &format!("{}/subjects/{s}?permanent=true", r.url),
        None,
    )
    .await;
    assert_eq!((st, body["error_code"].clone()), (404, json!(40405)));
    let (_, body) = call(M::DELETE, &format!("{}/subjects/{s}", r.url), None).await;
    assert_eq!(body, json!([1, 2, 3]));
    let (_, body) = call(M::GET, &format!("{}/subjects", r.url), None).await;
    assert!(!body.as_array().unwrap().contains(&json!(s)));
    let (_, body) = call(M::GET, &format!("{}/subjects?deleted=true", r.url), None).await;
    assert!(body.as_array().unwrap().contains(&json!(s)));
    let (st, _) = call(
        M::DELETE,
        &format!("{}/subjects/{s}?permanent=true", r.url),
        None,
    )
    .await;
    assert_eq!(st, 200);
    r.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_with_the_same_ids() {
    let topic = unique("_schemas-it");
    let r = start(&topic).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let s = format!("restart-{i}");
        let schema = V1.replace("\"T\"", &format!("\"T{i}\""));
        let (_, body) = call(
            reqwest::Method::POST,
            &format!("{}/subjects/{s}/versions", r.url),
            Some(json!({"schema": schema})),
        )
        .await;
        ids.push((s, body["id"].as_u64().unwrap()));
    }
    call(
        reqwest::Method::PUT,
        &format!("{}/config", r.url),
        Some(json!({"compatibility": "FULL_TRANSITIVE"})),
    )
    .await;
    r.stop().await;

    let r = start(&topic).await;
    for (s, id) in &ids {
        let (_, body) = call(
            reqwest::Method::GET,
            &format!("{}/subjects/{s}/versions/1", r.url),
            None,
        )
        .await;
        assert_eq!(body["id"].as_u64().unwrap(), *id);
    }
    let (_, body) = call(reqwest::Method::GET, &format!("{}/config", r.url), None).await;
    assert_eq!(body["compatibilityLevel"], json!("FULL_TRANSITIVE"));
    // A new registration continues after the highest id instead of reusing one.
    let (_, body) = call(
        reqwest::Method::POST,
        &format!("{}/subjects/after/versions", r.url),
        Some(json!({"schema": V2})),
    )
    .await;
    assert!(body["id"].as_u64().unwrap() > ids.iter().map(|(_, id)| *id).max().unwrap());
    r.stop().await;
}

#[tokio::test]
async fn schema_registry_converter_round_trips_through_this_registry() {
    let r = start(&unique("_schemas-it")).await;
    let codec = Codec::new(&CodecOptions {
        registry_url: r.url.clone(),
        max_allocation_bytes: 16 << 20,
    })
    .unwrap();
    let topic = unique("it.inbox");
    for record in fixtures::inbox_records() {
        let bytes = codec.encode(&topic, &record).await.unwrap();
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        let back: InboxRecord = codec.decode(Some(&bytes)).await.unwrap();
        assert_eq!(back, record);
    }
    // The schema landed under the TopicNameStrategy subject.
    let (_, body) = call(reqwest::Method::GET, &format!("{}/subjects", r.url), None).await;
    assert!(
        body.as_array()
            .unwrap()
            .contains(&json!(format!("{topic}-value")))
    );
    // A record framed with an unknown id is an undecodable record, not a crash.
    let err = codec
        .decode::<InboxRecord>(Some(&[0, 0, 0x7f, 0xff, 0xff, 2]))
        .await
        .unwrap_err();
    assert!(err.is_undecodable(), "{err}");
    r.stop().await;
}

#[tokio::test]
async fn compatibility_gate_rejects_an_incompatible_event_schema() {
    // The event topics are BACKWARD_TRANSITIVE: a change that drops a default-less field's
    // reader compatibility with any earlier version is refused.
    let r = start(&unique("_schemas-it")).await;
    let subject = unique("it.events-value");
    let url = format!("{}/config/{subject}", r.url);
    call(
        reqwest::Method::PUT,
        &url,
        Some(json!({"compatibility": "BACKWARD_TRANSITIVE"})),
    )
    .await;
    let avsc = <triad_domain::WorkflowEvent as triad_codec::AvroRecord>::AVSC;
    let (st, _) = call(
        reqwest::Method::POST,
        &format!("{}/subjects/{subject}/versions", r.url),
        Some(json!({"schema": avsc})),
    )
    .await;
    assert_eq!(st, 200);
    // A new required field without a default: new readers cannot read old events.
    let mut broken: Value = serde_json::from_str(avsc).unwrap();
    broken["fields"][0]["type"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "tenant", "type": "string"}));
    let (st, body) = call(
        reqwest::Method::POST,
        &format!("{}/subjects/{subject}/versions", r.url),
        Some(json!({"schema": broken.to_string()})),
    )
    .await;
    assert_eq!(st, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("BACKWARD"),
        "{body}"
    );
    r.stop().await;
}
