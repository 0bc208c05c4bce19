//! The REST/SSE API (`triad api`) on the real stack: submit with an idempotency key, follow
//! the workflow over Server-Sent Events from the read model (ordered, gap-free, ending with
//! the final event), resume with `Last-Event-ID`, read the workflow, and get
//! `application/problem+json` errors that name the field for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Env, kill};
use triad_domain::EventBody;

/// One SSE frame: (id, event, data).
fn frames(text: &str) -> Vec<(i64, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            Some((id?, event?, data?))
        })
        .collect()
}

fn document(topic: &str) -> Value {
    json!({
        "name": "api-research",
        "zones": ["US-EAST"],
        "tasks": [
            {"id": "generate_questions", "prompt": format!("Generate 3 questions about {topic}")},
            {"id": "answer", "prompt": "Answer: {generate_questions.output}",
             "depends_on": ["generate_questions"]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_resume_read_and_clear_errors_over_rest() {
    let mut env = Env::new(2).await;
    let (mut children, base, http, schema) =
        support::api_stack(&mut env, &[("TRIAD_API__MAX_BODY_BYTES", "4096")]).await;

    // Submit twice with one key: one workflow.
    let key = format!("api-test-{}", uuid::Uuid::new_v4());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{base}/v1/workflows"))
            .header("Idempotency-Key", &key)
            .json(&document(&key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "SUBMITTED");
        let id = body["workflow_id"].as_str().unwrap().to_owned();
        assert_eq!(body["stream_url"], format!("/v1/workflows/{id}/events"));
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "the same key names the same workflow");
    let id = ids[0].clone();

    // The stream: the whole workflow in order, ending with its final event.
    let text = tokio::time::timeout(
        Duration::from_secs(120),
        http.get(format!("{base}/v1/workflows/{id}/events")).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        text.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = tokio::time::timeout(Duration::from_secs(120), text.text())
        .await
        .unwrap()
        .unwrap();
    let got = frames(&text);
    let seqs: Vec<i64> = got.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        seqs,
        (1..=got.len() as i64).collect::<Vec<_>>(),
        "gap-free and ordered"
    );
    assert_eq!(got.first().unwrap().1, "workflow.accepted");
    assert_eq!(got.last().unwrap().1, "workflow.complete");
    assert_eq!(
        got.iter().filter(|f| f.1 == "task.complete").count(),
        2,
        "{text}"
    );
    // The same events as the event store, by id: the double submit was one workflow.
    let raw = env
        .events_until_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    let raw_ids: Vec<String> = raw
        .iter()
        .filter(|e| e.meta.workflow_id == id)
        .map(|e| e.meta.event_id.clone())
        .collect();
    let streamed: Vec<String> = got
        .iter()
        .map(|(_, _, d)| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streamed, raw_ids);
    assert_eq!(
        raw.iter()
            .filter(|e| e.meta.workflow_id == id && matches!(e.body, EventBody::WorkflowAccepted(_)))
            .count(),
        1
    );

    // Resume after a disconnect: exactly the rest.
    let rest = http
        .get(format!("{base}/v1/workflows/{id}/events"))
        .header("Last-Event-ID", "5")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rest: Vec<i64> = frames(&rest).iter().map(|f| f.0).collect();
    assert_eq!(rest, (6..=got.len() as i64).collect::<Vec<_>>());

    // The workflow as the read model has it.
    let (_, w) = support::get_json(&http, &format!("{base}/v1/workflows/{id}")).await;
    assert_eq!(w["status"], "COMPLETED");
    assert_eq!(w["tasks_completed"], 2);
    assert_eq!(w["last_sequence"], got.len());
    let answer = w["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "answer")
        .unwrap();
    assert_eq!(answer["status"], "COMPLETED");
    assert!(
        answer["output"].as_str().unwrap().contains(&key),
        "{answer}"
    );

    // Errors: problem+json with a stable code, naming the field.
    let problem = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status(), status, "{code}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        body
    };
    let invalid = http
        .post(format!("{base}/v1/workflows"))
        .json(&json!({"name": "x", "zones": ["US-EAST"], "tasks": [
            {"id": "a", "prompt": "hi"}, {"id": "b", "prompt": "{a.output}"}]}))
        .send()
        .await
        .unwrap();
    let body = problem(invalid, 422, "invalid_workflow").await;
    assert_eq!(body["errors"][0]["field"], "tasks[1].prompt", "{body}");
    // A raw body of the given content type to the submit endpoint.
    let post_raw = |content_type: &'static str, body: Vec<u8>| {
        http.post(format!("{base}/v1/workflows"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let garbled = post_raw("application/json", b"{\"name\": ".to_vec())
        .await
        .unwrap();
    problem(garbled, 400, "invalid_document").await;
    let form = post_raw("text/plain", b"hello".to_vec()).await.unwrap();
    problem(form, 415, "unsupported_media_type").await;
    let big = post_raw("application/json", vec![b' '; 8192])
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let missing = http
        .get(format!("{base}/v1/workflows/wf-nope"))
        .send()
        .await
        .unwrap();
    problem(missing, 404, "workflow_not_found").await;
    let finished = http
        .post(format!("{base}/v1/workflows/{id}/cancel"))
        .send()
        .await
        .unwrap();
    problem(finished, 409, "workflow_finished").await;
    let bad_resume = http
        .get(format!("{base}/v1/workflows/{id}/events"))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    problem(bad_resume, 400, "invalid_last_event_id").await;

    // Prometheus counters by route template; every stream above has ended.
    let metrics = support::get_text(&http, &format!("{base}/metrics")).await;
    for line in [
        "triad_api_requests_total{route=\"/v1/workflows\",method=\"POST\",status=\"202\"} 2",
        "triad_api_requests_total{route=\"/v1/workflows/{id}\",method=\"GET\",status=\"404\"} 1",
        "triad_api_requests_total{route=\"/v1/workflows/{id}/events\",method=\"GET\",status=\"200\"} 2",
        "triad_api_streams_open 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    for c in &mut children {
        kill(c);
    }
    let (pg, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=triad dbname=triad",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    pg.query("SELECT triad_drop_schema($1)", &[&schema])
        .await
        .unwrap();
}
