//! Remote models registering themselves on the real stack (ADR 0020, docs/market.md): the
//! edge checks registrations against the policy and names the field; executors re-check a
//! record written straight to `triad.models`, serve a registered model from their next task
//! and drop it on deregistration, with no restart; the processor validates model hints
//! against the registry and stamps the position it decided at; a model registered with
//! heartbeats that stops sending them is skipped until they resume. Remote models are local
//! servers speaking the OpenAI wire protocol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Env, cli, cli_ok, kill};
use triad_domain::{EventBody, ExecutorStatus, StatusBody, WorkflowEvent};
use triad_testkit::{Behaviour, FakeProvider, Flavor};

/// `(model, installed, reason)` of every adapter install report.
fn installs(statuses: &[ExecutorStatus]) -> Vec<(String, bool, String)> {
    statuses
        .iter()
        .filter_map(|s| match &s.body {
            StatusBody::AdapterInstall(i) => Some((
                i.model_id.clone(),
                i.installed,
                i.reason.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// `(healthy, reason)` of every health transition of `model` after `since` (µs).
fn transitions(statuses: &[ExecutorStatus], model: &str, since: i64) -> Vec<(bool, String)> {
    statuses
        .iter()
        .filter(|s| s.occurred_at > since)
        .filter_map(|s| match &s.body {
            StatusBody::HealthTransition(h) if h.model_id == model => {
                Some((h.healthy, h.reason.clone()))
            }
            _ => None,
        })
        .collect()
}

fn routed_model(events: &[WorkflowEvent], wf: &str) -> String {
    events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::TaskRouted(r) if e.meta.workflow_id == wf => {
                Some(r.decision.model_id.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{wf} was never routed"))
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = http.post(url).json(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn hinted(model: &str) -> Value {
    json!({
        "name": "hinted",
        "zones": ["US-EAST"],
        "tasks": [{"id": "t", "prompt": "Summarise the tides", "model": model, "max_tokens": 50}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_models_register_serve_and_leave_without_restarts() {
    let vllm = FakeProvider::start(Flavor::OpenAi).await;
    vllm.set_default(Behaviour::Answer(Some("from the registered model".into())));
    // EU-WEST only allows a partner's host: a local endpoint cannot claim it.
    let mut env = Env::new(1)
        .await
        .with_config("[policy.hosts]\n\"EU-WEST\" = [\"api.partner.example\"]\n");
    let (mut children, base, http, _) = support::api_stack(&mut env, &[]).await;
    // Models are registered by a tenant admin and then belong to the tenant; a member may
    // not register, nor may another tenant's admin change them.
    let admin = support::api_key(&env, "acme", "tenant_admin");
    let member = support::api_key(&env, "acme", "member");
    let rival = support::api_key(&env, "beta", "tenant_admin");
    let admin = admin.as_str();
    let models = format!("{base}/v1/models");
    let workflows = format!("{base}/v1/workflows");
    let document = json!({
        "id": "vllm-east", "kind": "openai", "base_url": vllm.base_url(),
        "zones": ["US-EAST"], "specialties": ["summarization"],
        "input_micros_per_1k": 10, "output_micros_per_1k": 20,
        "latency_p50_ms": 50, "latency_p95_ms": 100, "latency_p99_ms": 200
    });

    // The edge: tenant admins only; every broken rule named; unknown fields refused.
    let (status, problem) = post(&http, &models, Some(&member), &document).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));
    let mut outside = document.clone();
    outside["zones"] = json!(["MARS", "EU-WEST"]);
    outside["bid_confidence"] = json!(1.5);
    let (status, problem) = post(&http, &models, Some(admin), &outside).await;
    assert_eq!(status, 422, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["zones[0]", "base_url", "bid_confidence"],
        "{problem}"
    );
    assert!(
        problem["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("is not allowed in zone EU-WEST (policy.hosts)"),
        "{problem}"
    );
    let mut secret = document.clone();
    secret["api_key"] = json!("sk-live-should-never-travel");
    let (status, problem) = post(&http, &models, Some(admin), &secret).await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `api_key`")
    );
    let mut configured = document.clone();
    configured["id"] = json!("triad-local");
    let (status, problem) = post(&http, &models, Some(admin), &configured).await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("id"))
    );

    // Before it registers, a workflow naming it is refused, naming the field.
    let (status, problem) = post(&http, &workflows, None, &hinted("vllm-east")).await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["field"], "tasks[0].model", "{problem}");

    // It registers: visible at once on this node, in REST and in GraphQL `models`.
    let (status, registered) = post(&http, &models, Some(admin), &document).await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["visible"], true);
    assert_eq!(registered["registration"]["version"], 1);
    let by = registered["registration"]["remote"]["registered_by"]
        .as_str()
        .unwrap();
    assert!(by.starts_with("acme/"), "{by}");
    // Another tenant's admin cannot take the id over, heartbeat or remove it.
    let (status, problem) = post(&http, &models, Some(&rival), &document).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("forbidden")),
        "{problem}"
    );
    let (status, _) = post(
        &http,
        &format!("{models}/vllm-east/heartbeat"),
        Some(&rival),
        &json!({}),
    )
    .await;
    assert_eq!(status, 403);
    let r = http
        .delete(format!("{models}/vllm-east"))
        .bearer_auth(&rival)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // The same document again writes nothing.
    let (status, again) = post(&http, &models, Some(admin), &document).await;
    assert_eq!(
        (status, &again["unchanged"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["registration"]["version"], 1);
    let (_, listed) = support::get_json(&http, &models).await;
    assert_eq!(listed["registered"][0]["model_id"], "vllm-east", "{listed}");
    assert!(
        listed["configured"]
            .as_array()
            .unwrap()
            .contains(&json!("triad-local"))
    );
    let (_, answer) = post(
        &http,
        &format!("{base}/graphql"),
        None,
        &json!({"query": "{ models { modelId tasksCompleted registration { version kind baseUrl zones specialties outputMicrosPer1K registeredBy } } }"}),
    )
    .await;
    let gql = answer["data"]["models"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .find(|m| m["modelId"] == "vllm-east")
        .unwrap_or_else(|| panic!("{answer}"))
        .clone();
    assert_eq!(gql["registration"]["kind"], "OPENAI");
    assert_eq!(gql["registration"]["zones"], json!(["US-EAST"]));
    assert_eq!(gql["registration"]["outputMicrosPer1K"], 20);
    assert_eq!(gql["tasksCompleted"], 0);

    // The executor re-checked it and serves it, without a restart.
    let statuses = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(60),
            "vllm-east installed",
            |s: &[ExecutorStatus]| installs(s).iter().any(|(m, ok, _)| m == "vllm-east" && *ok),
        )
        .await;
    // How long joining took, from the records' own clocks (reported, not asserted).
    let installed_at = statuses
        .iter()
        .find(|s| matches!(&s.body, StatusBody::AdapterInstall(i) if i.model_id == "vllm-east"))
        .map(|s| s.occurred_at)
        .unwrap();
    let registered_at = registered["registration"]["registered_at"]
        .as_i64()
        .unwrap();
    eprintln!(
        "registration → executor serving it: {:.1} ms",
        (installed_at - registered_at) as f64 / 1000.0
    );
    let (status, submitted) = post(&http, &workflows, None, &hinted("vllm-east")).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["workflow_id"].as_str().unwrap().to_owned();
    let events = env
        .events_until_finished(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(routed_model(&events, &id), "vllm-east");
    let position = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::WorkflowAccepted(a) if e.meta.workflow_id == id => a.registry_position,
            _ => None,
        })
        .expect("the decision records the registry position");
    assert!(position >= 1, "{position}");
    assert!(events.iter().any(|e| matches!(&e.body,
        EventBody::TaskCompleted(t) if e.meta.workflow_id == id
            && t.output == b"from the registered model")));
    let requests = vllm.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["model"], "vllm-east");

    // A record another writer got wrong, straight onto the topic: every consumer refuses it.
    let rogue = triad_market::registry::RemoteSpec {
        kind: triad_market::registry::SpecKind::Openai,
        base_url: vllm.base_url(),
        model: None,
        api_key_env: None,
        zones: vec!["EU-WEST".into()],
        specialties: vec![],
        input_micros_per_1k: 0,
        output_micros_per_1k: 0,
        latency_p50_ms: 10,
        latency_p95_ms: 10,
        latency_p99_ms: 10,
        max_context: 8192,
        timeout_ms: 1000,
        bid_confidence: None,
        heartbeat_every_ms: 0,
    }
    .into_remote("rogue", "someone-with-broker-access");
    let forged = triad_market::registry::registration("rogue", 1, rogue, triad_kafka::now_micros());
    env.producer
        .send_record(&env.codec, &env.names.models, None, "rogue", &forged)
        .await
        .unwrap();
    let statuses = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(60),
            "rogue refused",
            |s: &[ExecutorStatus]| installs(s).iter().any(|(m, _, _)| m == "rogue"),
        )
        .await;
    let (_, ok, reason) = installs(&statuses)
        .into_iter()
        .find(|(m, _, _)| m == "rogue")
        .unwrap();
    assert!(!ok);
    assert!(
        reason.contains("not allowed in zone EU-WEST (policy.hosts)"),
        "{reason}"
    );
    let (_, listed) = support::get_json(&http, &models).await;
    assert_eq!(
        listed["registered"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    // The processor's own check: a submission written straight to the inbox is rejected.
    env.submit(
        "wf-rogue",
        triad_workflow::Workflow::new("rogue")
            .zones(["EU-WEST"])
            .task(
                triad_workflow::Task::new("t", "Summarise")
                    .model("rogue")
                    .max_tokens(20),
            )
            .to_command(),
    )
    .await;
    let events = env
        .events_until_finished(&["wf-rogue".to_owned()], Duration::from_secs(60))
        .await;
    let rejected = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::WorkflowRejected(r) if e.meta.workflow_id == "wf-rogue" => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        rejected.field.as_deref(),
        Some("tasks[0].model"),
        "{rejected:?}"
    );
    assert!(rejected.registry_position.is_some());
    let (listing, _) = cli_ok(&env, &["models", "list"], &[]);
    assert!(listing.contains("vllm-east v1"), "{listing}");
    assert!(
        listing.contains("rogue v1") && listing.contains("outside this policy"),
        "{listing}"
    );

    // GraphQL: the same edge, the same rules, codes and fields.
    let graphql = format!("{base}/graphql");
    let register = r#"mutation($id: String!, $input: RemoteModelInput!) {
        registerModel(id: $id, input: $input) { version kind zones registeredBy heartbeatEveryMs } }"#;
    let input = |zones: Value| json!({"kind": "openai", "baseUrl": vllm.base_url(), "zones": zones, "heartbeatEveryMs": 0});
    let (_, answer) = post(
        &http,
        &graphql,
        Some(&member),
        &json!({"query": register, "variables": {"id": "gql-model", "input": input(json!(["US-EAST"]))}}),
    )
    .await;
    assert_eq!(support::graphql_code(&answer), "FORBIDDEN", "{answer}");
    let (_, answer) = post(
        &http,
        &graphql,
        Some(admin),
        &json!({"query": register, "variables": {"id": "gql-model", "input": input(json!(["US-EAST", "MARS"]))}}),
    )
    .await;
    let extensions = &answer["errors"][0]["extensions"];
    assert_eq!(extensions["code"], "INVALID_REGISTRATION", "{answer}");
    assert_eq!(extensions["fields"], json!(["zones[1]"]), "{answer}");
    let (_, answer) = post(
        &http,
        &graphql,
        Some(admin),
        &json!({"query": register, "variables": {"id": "gql-model", "input": input(json!(["US-EAST"]))}}),
    )
    .await;
    let registered = &answer["data"]["registerModel"];
    assert_eq!(registered["version"], 1, "{answer}");
    assert!(
        registered["registeredBy"]
            .as_str()
            .is_some_and(|b| b.starts_with("acme/")),
        "{answer}"
    );
    let deregister = r#"mutation { deregisterModel(id: "gql-model") }"#;
    let (_, answer) = post(&http, &graphql, Some(admin), &json!({"query": deregister})).await;
    assert_eq!(answer["data"]["deregisterModel"], true, "{answer}");
    let (_, answer) = post(&http, &graphql, Some(admin), &json!({"query": deregister})).await;
    assert_eq!(support::graphql_code(&answer), "NOT_FOUND", "{answer}");

    // Deregistered: the executor drops it and new submissions cannot name it.
    let deleted = http
        .delete(format!("{models}/vllm-east"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let again = http
        .delete(format!("{models}/vllm-east"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 404);
    env.read_until(
        &env.names.executor_status,
        Duration::from_secs(60),
        "vllm-east deregistered",
        |s: &[ExecutorStatus]| {
            installs(s)
                .iter()
                .any(|(m, ok, r)| m == "vllm-east" && !ok && r == "deregistered")
        },
    )
    .await;
    let (status, problem) = post(&http, &workflows, None, &hinted("vllm-east")).await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("tasks[0].model"))
    );
    for c in &mut children {
        kill(&mut c.0);
    }
    assert_eq!(
        vllm.requests().len(),
        1,
        "never called after deregistration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_model_that_misses_heartbeats_is_skipped_until_they_resume() {
    let beating = FakeProvider::start(Flavor::OpenAi).await;
    let steady = FakeProvider::start(Flavor::OpenAi).await;
    let env = Env::new(1).await.with_config(&format!(
        "[executor]\nhealth_every_ms = 100\nunhealthy_after = 3\nhealthy_after = 1\n\n\
         [models.steady]\nkind = \"openai\"\nbase_url = \"{}\"\nzones = [\"US-EAST\"]\n\
         specialties = [\"research\"]\ninput_micros_per_1k = 9000\noutput_micros_per_1k = 9000\n\
         latency_p50_ms = 100\nlatency_p95_ms = 200\n",
        steady.base_url()
    ));
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);

    // A models.toml bootstrap: checked whole before anything is written.
    let bad = env.dir().join("bad-models.toml");
    std::fs::write(
        &bad,
        format!(
            "[models.good]\nkind = \"openai\"\nbase_url = \"{}\"\nzones = [\"US-EAST\"]\n\n\
             [models.bad]\nkind = \"openai\"\nbase_url = \"{}\"\nzones = [\"MARS\"]\n",
            beating.base_url(),
            beating.base_url()
        ),
    )
    .unwrap();
    let out = cli(&env, &["models", "add", bad.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nothing registered"), "{stderr}");
    assert!(
        stderr.contains("models.bad.zones[0]: \"MARS\" is not a zone of the policy"),
        "{stderr}"
    );
    let file = env.dir().join("models.toml");
    std::fs::write(
        &file,
        format!(
            "[models.beating]\nkind = \"openai\"\nbase_url = \"{}\"\nzones = [\"US-EAST\"]\n\
             specialties = [\"research\"]\ninput_micros_per_1k = 1000\noutput_micros_per_1k = 1000\n\
             latency_p50_ms = 100\nlatency_p95_ms = 200\nlatency_p99_ms = 300\n\
             heartbeat_every_ms = 1000\n",
            beating.base_url()
        ),
    )
    .unwrap();
    let (out, _) = cli_ok(
        &env,
        &["models", "add", file.to_str().unwrap(), "--wait-for", "1"],
        &[],
    );
    assert!(out.contains("registered beating version 1"), "{out}");
    assert!(out.contains(": installed"), "{out}");
    // A bootstrap run again writes nothing new.
    let (again, _) = cli_ok(&env, &["models", "add", file.to_str().unwrap()], &[]);
    assert!(again.contains("unchanged beating (version 1)"), "{again}");
    let sidecar_args = [
        "models",
        "heartbeat",
        "beating",
        "--every-ms",
        "200",
        "--sender",
        "sidecar-1",
    ];
    let mut sidecar = env.spawn("sidecar", &sidecar_args);
    env.read_until(
        &env.names.model_health,
        Duration::from_secs(60),
        "a heartbeat of beating",
        |h: &[triad_domain::ModelHeartbeat]| {
            h.iter()
                .any(|h| h.model_id == "beating" && h.sender == "sidecar-1")
        },
    )
    .await;
    let task = |name: &str| {
        triad_workflow::Workflow::new(name).zones(["US-EAST"]).task(
            triad_workflow::Task::new("t", "Look this up")
                .specialties(["research"])
                .max_tokens(50),
        )
    };
    env.submit("wf-alive", task("alive").to_command()).await;
    let events = env
        .events_until_finished(&["wf-alive".to_owned()], Duration::from_secs(60))
        .await;
    assert_eq!(
        routed_model(&events, "wf-alive"),
        "beating",
        "the cheaper model"
    );

    let (listing, _) = cli_ok(&env, &["models", "list"], &[]);
    assert!(listing.contains("heartbeats every 1000 ms"), "{listing}");

    // The sidecar stops: after three silent intervals the model is unhealthy and skipped.
    let killed_at = triad_kafka::now_micros();
    kill(&mut sidecar.0);
    let statuses = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(60),
            "beating marked unhealthy",
            |s: &[ExecutorStatus]| {
                transitions(s, "beating", killed_at)
                    .last()
                    .is_some_and(|(h, _)| !h)
            },
        )
        .await;
    let (_, reason) = transitions(&statuses, "beating", killed_at).pop().unwrap();
    assert!(reason.contains("heartbeats missed"), "{reason}");
    // Reported, not asserted: the record's clock against the test's.
    let at = |s: &[ExecutorStatus], since: i64, healthy: bool| {
        s.iter()
            .filter(|s| s.occurred_at > since)
            .find(|s| matches!(&s.body, StatusBody::HealthTransition(h) if h.model_id == "beating" && h.healthy == healthy))
            .map(|s| (s.occurred_at - since) as f64 / 1000.0)
            .unwrap()
    };
    eprintln!(
        "sidecar killed → marked unhealthy: {:.0} ms (heartbeats every 1000 ms, unhealthy after 3 missed)",
        at(&statuses, killed_at, false)
    );
    env.submit("wf-silent", task("silent").to_command()).await;
    let events = env
        .events_until_finished(&["wf-silent".to_owned()], Duration::from_secs(60))
        .await;
    assert_eq!(routed_model(&events, "wf-silent"), "steady");
    assert_eq!(beating.requests().len(), 1, "a silent model is not called");

    // Heartbeats resume: healthy again, and chosen again.
    let resumed_at = triad_kafka::now_micros();
    let mut sidecar = env.spawn("sidecar-2", &sidecar_args);
    let statuses = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(60),
            "beating healthy again",
            |s: &[ExecutorStatus]| {
                transitions(s, "beating", resumed_at)
                    .last()
                    .is_some_and(|(h, _)| *h)
            },
        )
        .await;
    eprintln!(
        "sidecar restarted → healthy again: {:.0} ms (includes the sidecar's start)",
        at(&statuses, resumed_at, true)
    );
    env.submit("wf-back", task("back").to_command()).await;
    let events = env
        .events_until_finished(&["wf-back".to_owned()], Duration::from_secs(60))
        .await;
    kill(&mut sidecar.0);
    kill(&mut processor.0);
    kill(&mut executor.0);
    assert_eq!(routed_model(&events, "wf-back"), "beating");
    assert_eq!(beating.requests().len(), 2);
}
