//! The market's cost estimates and capability matching on the real stack (`triad process`,
//! `triad execute`, `triad project`, `triad api` as child processes; local servers speak
//! the OpenAI wire protocol for three priced models):
//! - `triad estimate --json`, `POST /v1/estimate` and GraphQL `estimateCost` give the same
//!   figures, and bad documents get errors that name the field;
//! - what the workflow then costs stays within the worst case, task by task, even when a
//!   failing first choice falls back to the dearest model;
//! - a task that names no specialty is routed by what its prompt reads as;
//! - auctions: every bid is recorded with its fate, the cheapest qualifying bid wins, and a
//!   winner that does not deliver what it promised loses standing until a dearer, reliable
//!   rival wins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Env, cli_ok, kill};
use triad_domain::EventBody;
use triad_testkit::{Behaviour, FakeProvider, Flavor};

/// A `[models.<id>]` table for an OpenAI-compatible model served by a local fake.
fn model_toml(id: &str, base: &str, specialties: &str, price: (i64, i64), extra: &str) -> String {
    format!(
        "[models.{id}]\nkind = \"openai\"\nbase_url = \"{base}\"\nzones = [\"US-EAST\"]\n\
         specialties = [{specialties}]\ninput_micros_per_1k = {}\noutput_micros_per_1k = {}\n\
         latency_p50_ms = 100\nlatency_p95_ms = 200\n{extra}\n",
        price.0, price.1
    )
}

/// The two bidders of the auction tests: "bargain" (1 000 µ/1K) and "premium" (5 000 µ/1K),
/// both research models that bid with confidence 0.9.
fn bidders_toml(bargain: &FakeProvider, premium: &FakeProvider) -> String {
    let research = "\"research\"";
    format!(
        "{}{}",
        model_toml(
            "bargain",
            &bargain.base_url(),
            research,
            (1_000, 1_000),
            "bid_confidence = 0.9"
        ),
        model_toml(
            "premium",
            &premium.base_url(),
            research,
            (5_000, 5_000),
            "bid_confidence = 0.9"
        ),
    )
}

fn document() -> Value {
    json!({
        "name": "market",
        "zones": ["US-EAST"],
        "tasks": [
            {"id": "q", "prompt": "Generate 3 questions about tides",
             "specialties": ["research"], "max_tokens": 200},
            {"id": "answer", "prompt": "Answer: {q.output}", "specialties": ["research"],
             "depends_on": ["q"], "max_tokens": 200},
            {"id": "french", "prompt": "Translate this sentence into French: {answer.output}",
             "depends_on": ["answer"], "max_tokens": 400}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_agree_everywhere_bound_the_real_cost_and_prompts_steer_routing() {
    let cheap = FakeProvider::start(Flavor::OpenAi).await;
    let dear = FakeProvider::start(Flavor::OpenAi).await;
    let translator = FakeProvider::start(Flavor::OpenAi).await;
    // "q" succeeds on the cheap model; "answer" is refused there (400: no retry), so it
    // falls back to the dear one.
    cheap.push(Behaviour::Answer(None));
    cheap.push(Behaviour::Status {
        code: 400,
        retry_after: None,
        message: "context rejected".into(),
    });
    let mut env = Env::new(1).await.with_config(&format!(
        "{}{}{}",
        model_toml(
            "cheap",
            &cheap.base_url(),
            "\"research\"",
            (2_000, 4_000),
            ""
        ),
        model_toml(
            "dear",
            &dear.base_url(),
            "\"research\"",
            (20_000, 40_000),
            ""
        ),
        model_toml(
            "translator",
            &translator.base_url(),
            "\"translation\"",
            (2_000, 4_000),
            ""
        ),
    ));
    let file = env.dir().join("market.json");
    std::fs::write(&file, document().to_string()).unwrap();

    // The CLI needs no stack.
    let (out, _) = cli_ok(&env, &["estimate", file.to_str().unwrap(), "--json"], &[]);
    let offline: Value = serde_json::from_str(&out).unwrap();
    let tasks = offline["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0]["model"], "cheap");
    assert_eq!(tasks[0]["candidates"], json!(["cheap", "dear"]));
    // 32 bytes of prompt → 8 tokens; 200 out: (8·2000 + 200·4000) / 1000.
    assert_eq!(tasks[0]["prompt_tokens"], 8);
    assert_eq!(tasks[0]["expected_micros"], 816);
    assert_eq!(tasks[0]["worst_case_micros"], 3 * 8_160);
    // "answer" counts q's output at its 200 tokens.
    assert_eq!(tasks[1]["prompt_tokens"], 203);
    assert_eq!(tasks[2]["inferred_specialty"], "translation");
    assert_eq!(tasks[2]["model"], "translator");
    let (table, _) = cli_ok(&env, &["estimate", file.to_str().unwrap()], &[]);
    assert!(
        table.contains(&format!(
            "worst case {} µcredits",
            offline["worst_case_micros"]
        )),
        "{table}"
    );

    let (mut children, base, http, schema) = support::api_stack(&mut env, &[]).await;

    // REST: the same estimate as the CLI.
    let estimate = format!("{base}/v1/estimate");
    let (status, rest) = support::post_json(&http, &estimate, &document()).await;
    assert_eq!(status, 200);
    assert_eq!(rest, offline);
    // A bad document: 422 naming the field, as for a submission.
    let mut bad = document();
    bad["tasks"][1]["depends_on"] = json!(["nowhere"]);
    let (status, problem) = support::post_json(&http, &estimate, &bad).await;
    assert_eq!(status, 422);
    assert_eq!(
        problem["errors"][0]["field"], "tasks[1].depends_on[0]",
        "{problem}"
    );

    // GraphQL: the same figures again.
    let query = r#"query($input: WorkflowInput!) { estimateCost(input: $input) {
        expectedMicros worstCaseMicros
        tasks { taskId model candidates inferredSpecialty promptTokens expectedMicros worstCaseMicros problem } } }"#;
    let input = json!({
        "name": "market", "zones": ["US-EAST"],
        "tasks": [
            {"id": "q", "prompt": "Generate 3 questions about tides", "specialties": ["research"], "maxTokens": 200},
            {"id": "answer", "prompt": "Answer: {q.output}", "specialties": ["research"], "dependsOn": ["q"], "maxTokens": 200},
            {"id": "french", "prompt": "Translate this sentence into French: {answer.output}", "dependsOn": ["answer"], "maxTokens": 400}
        ]
    });
    let (_, r) = support::post_json(
        &http,
        &format!("{base}/graphql"),
        &json!({"query": query, "variables": {"input": input}}),
    )
    .await;
    let gql = &r["data"]["estimateCost"];
    assert_eq!(gql["worstCaseMicros"], offline["worst_case_micros"], "{r}");
    assert_eq!(gql["expectedMicros"], offline["expected_micros"]);
    for (g, o) in gql["tasks"].as_array().unwrap().iter().zip(tasks) {
        assert_eq!(g["taskId"], o["task"]);
        assert_eq!(g["model"], o["model"]);
        assert_eq!(g["candidates"], o["candidates"]);
        assert_eq!(g["inferredSpecialty"], o["inferred_specialty"]);
        assert_eq!(g["worstCaseMicros"], o["worst_case_micros"]);
    }

    // Run it: every task's billed cost stays within its worst case.
    let (status, submitted) =
        support::post_json(&http, &format!("{base}/v1/workflows"), &document()).await;
    assert_eq!(status, 202);
    let id = submitted["workflow_id"].as_str().unwrap().to_owned();
    let events = env
        .events_until_finished(std::slice::from_ref(&id), Duration::from_secs(120))
        .await;
    for c in &mut children {
        kill(&mut c.0);
    }
    let mut billed = 0;
    let mut routed = std::collections::BTreeMap::new();
    for e in &events {
        match &e.body {
            EventBody::TaskCompleted(t) => {
                let task = tasks
                    .iter()
                    .find(|x| x["task"] == t.task_id.as_str())
                    .unwrap();
                assert!(t.cost_micros > 0, "{t:?}");
                assert!(
                    t.cost_micros <= task["worst_case_micros"].as_i64().unwrap(),
                    "{} cost {} over its worst case {}",
                    t.task_id,
                    t.cost_micros,
                    task["worst_case_micros"]
                );
                billed += t.cost_micros;
            }
            EventBody::TaskRouted(r) => {
                routed.insert(r.task_id.clone(), r.decision.clone());
            }
            EventBody::WorkflowCompleted(w) => {
                assert_eq!(w.total_cost_micros, billed);
                assert!(billed <= offline["worst_case_micros"].as_i64().unwrap());
            }
            EventBody::WorkflowFailed(f) => panic!("the workflow failed: {f:?}"),
            _ => {}
        }
    }
    assert!(billed > 0);
    assert_eq!(routed["q"].model_id, "cheap");
    // The first choice refused; the fallback was the dearest candidate, still covered.
    assert_eq!(routed["answer"].model_id, "dear", "{:?}", routed["answer"]);
    assert!(routed["answer"].reason.starts_with("fallback"));
    // No specialty named: the prompt reads as translation, so the translator beats the
    // free, faster embedded model that would win on latency and price alone.
    assert_eq!(
        routed["french"].model_id, "translator",
        "{:?}",
        routed["french"]
    );
    assert_eq!(
        routed["french"].reason,
        "best score; the prompt reads as translation"
    );
    assert!(
        routed["french"]
            .alternatives
            .contains(&"triad-local".to_owned())
    );
    assert_eq!(translator.requests().len(), 1);
    support::pg()
        .await
        .query("SELECT triad_drop_schema($1)", &[&schema])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auctions_record_every_bid_and_a_winner_that_breaks_its_promise_loses_standing() {
    let bargain = FakeProvider::start(Flavor::OpenAi).await;
    let premium = FakeProvider::start(Flavor::OpenAi).await;
    let shy = FakeProvider::start(Flavor::OpenAi).await;
    let unsure = FakeProvider::start(Flavor::OpenAi).await;
    // The bargain model promises 100 ms and takes 500 ms, three times: each award it wins
    // is dishonoured (more than twice its estimate).
    for _ in 0..3 {
        bargain.push(Behaviour::Slow(Duration::from_millis(500)));
    }
    let research = "\"research\"";
    let env = Env::new(1).await.with_config(&format!(
        "{}{}{}",
        bidders_toml(&bargain, &premium),
        model_toml("shy", &shy.base_url(), research, (1, 1), ""),
        model_toml(
            "unsure",
            &unsure.base_url(),
            research,
            (1, 1),
            "bid_confidence = 0.2"
        ),
    ));
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    // Four auctions in a row (each task depends on the previous one).
    let mut wf = triad_workflow::Workflow::new("auctions").zones(["US-EAST"]);
    for i in 1..=4 {
        let mut t = triad_workflow::Task::new(format!("t{i}"), format!("Summarise step {i}"))
            .specialties(["research"])
            .max_tokens(100)
            .auction(true);
        if i > 1 {
            t = t.depends_on([format!("t{}", i - 1)]);
        }
        wf = wf.task(t);
    }
    env.submit("wf-auctions", wf.to_command()).await;
    let events = env
        .events_until_finished(&["wf-auctions".to_owned()], Duration::from_secs(120))
        .await;
    kill(&mut processor.0);
    kill(&mut executor.0);
    let mut closed = Vec::new();
    let mut bids: std::collections::BTreeMap<String, Vec<triad_domain::AuctionBid>> =
        Default::default();
    let mut routed = std::collections::BTreeMap::new();
    for e in &events {
        match &e.body {
            EventBody::BidPlaced(b) => bids
                .entry(b.task_id.clone())
                .or_default()
                .push(b.bid.clone()),
            EventBody::AuctionClosed(a) => closed.push(a.clone()),
            EventBody::TaskRouted(r) => {
                assert!(
                    r.decision.auction.is_none(),
                    "the auction travels as its own events"
                );
                routed.insert(r.task_id.clone(), r.decision.clone());
            }
            EventBody::WorkflowFailed(f) => panic!("the workflow failed: {f:?}"),
            _ => {}
        }
    }
    let winners: Vec<Option<&str>> = closed.iter().map(|a| a.winner.as_deref()).collect();
    assert_eq!(
        winners,
        [
            Some("bargain"),
            Some("bargain"),
            Some("bargain"),
            Some("premium")
        ],
        "{closed:?}"
    );
    for (i, a) in closed.iter().enumerate() {
        let task = format!("t{}", i + 1);
        assert_eq!(a.task_id, task);
        assert_eq!(a.bids, 4);
        let fates: std::collections::BTreeMap<&str, &str> = bids[&task]
            .iter()
            .map(|b| (b.model_id.as_str(), b.status.as_str()))
            .collect();
        let (won, lost) = if i < 3 {
            ("bargain", "premium")
        } else {
            ("premium", "bargain")
        };
        assert_eq!(fates[won], "WON");
        assert_eq!(fates[lost], "ACCEPTED");
        assert_eq!(fates["shy"], "DECLINED");
        assert_eq!(fates["unsure"], "BELOW_FLOOR");
        // The bargain model's standing halves with each broken promise: 1, ½, ¼, ⅛.
        let standing = bids[&task]
            .iter()
            .find(|b| b.model_id == "bargain")
            .unwrap()
            .standing;
        assert!(
            (standing - 0.5f64.powi(i as i32)).abs() < 1e-9,
            "{task}: {standing}"
        );
        // The award is what ran first.
        assert_eq!(routed[&task].model_id, won);
        assert!(
            routed[&task]
                .reason
                .starts_with("auction: lowest effective price")
        );
        assert_eq!(
            a.price_micros,
            bids[&task]
                .iter()
                .find(|b| b.model_id == won)
                .unwrap()
                .price_micros
        );
    }
    // Premium's price is five times bargain's: bargain at standing ⅛ costs eight times
    // its price, so it lost on effective price, not on the raw one.
    let last = &bids["t4"];
    let price = |m: &str| {
        last.iter()
            .find(|b| b.model_id == m)
            .unwrap()
            .price_micros
            .unwrap()
    };
    assert!(price("bargain") < price("premium"));
    assert_eq!((shy.requests().len(), unsure.requests().len()), (0, 0));
    assert_eq!(premium.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_mark_a_model_unhealthy_and_healthy_again_and_the_router_follows() {
    let flaky = FakeProvider::start(Flavor::OpenAi).await;
    let steady = FakeProvider::start(Flavor::OpenAi).await;
    flaky.set_health(Some(503));
    let research = "\"research\"";
    let env = Env::new(1).await.with_config(&format!(
        "[executor]\nhealth_every_ms = 100\nunhealthy_after = 2\nhealthy_after = 2\n\n{}{}",
        model_toml("flaky", &flaky.base_url(), research, (1_000, 1_000), ""),
        model_toml("steady", &steady.base_url(), research, (9_000, 9_000), ""),
    ));
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let transitions = |statuses: &[triad_domain::ExecutorStatus]| -> Vec<(String, bool)> {
        statuses
            .iter()
            .filter_map(|s| match &s.body {
                triad_domain::StatusBody::HealthTransition(h) => {
                    Some((h.model_id.clone(), h.healthy))
                }
                _ => None,
            })
            .collect()
    };
    // Two failed probes in a row: flaky is marked unhealthy, with the probe's answer.
    let statuses: Vec<triad_domain::ExecutorStatus> = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(60),
            "flaky marked unhealthy",
            |s: &[triad_domain::ExecutorStatus]| !transitions(s).is_empty(),
        )
        .await;
    assert_eq!(transitions(&statuses), [("flaky".to_owned(), false)]);
    let reason = statuses
        .iter()
        .find_map(|s| match &s.body {
            triad_domain::StatusBody::HealthTransition(h) => Some(h.reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("503"), "{reason}");
    let task = |id: &str| {
        triad_workflow::Workflow::new(id).zones(["US-EAST"]).task(
            triad_workflow::Task::new("t", "Look this up")
                .specialties(["research"])
                .max_tokens(50),
        )
    };
    // The cheaper model is skipped while unhealthy: never called, the dearer one answers.
    env.submit("wf-while-sick", task("sick").to_command()).await;
    let events = env
        .events_until_finished(&["wf-while-sick".to_owned()], Duration::from_secs(60))
        .await;
    let model_of = |events: &[triad_domain::WorkflowEvent], wf: &str| {
        events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::TaskRouted(r) if e.meta.workflow_id == wf => Some(r.decision.clone()),
                _ => None,
            })
            .unwrap()
    };
    let sick = model_of(&events, "wf-while-sick");
    assert_eq!(sick.model_id, "steady");
    assert!(!sick.alternatives.contains(&"flaky".to_owned()));
    assert!(
        flaky.requests().is_empty(),
        "an unhealthy model is not called"
    );
    // Healed: two good probes in a row and it is back, and chosen again (it is cheaper).
    flaky.set_health(None);
    env.read_until(
        &env.names.executor_status,
        Duration::from_secs(60),
        "flaky healthy again",
        |s: &[triad_domain::ExecutorStatus]| {
            transitions(s) == [("flaky".to_owned(), false), ("flaky".to_owned(), true)]
        },
    )
    .await;
    env.submit("wf-healed", task("healed").to_command()).await;
    let events = env
        .events_until_finished(&["wf-healed".to_owned()], Duration::from_secs(60))
        .await;
    kill(&mut processor.0);
    kill(&mut executor.0);
    assert_eq!(model_of(&events, "wf-healed").model_id, "flaky");
    assert_eq!(flaky.requests().len(), 1);
    assert!(flaky.health_probes() >= 4);
}

/// POSTs a GraphQL query; returns `data` (fails the test on errors).
async fn graphql(http: &reqwest::Client, base: &str, query: &str, variables: Value) -> Value {
    let answer = support::graphql(http, base, query, variables).await;
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_serves_model_health_and_a_workflows_auctions() {
    let bargain = FakeProvider::start(Flavor::OpenAi).await;
    let premium = FakeProvider::start(Flavor::OpenAi).await;
    let sick = FakeProvider::start(Flavor::OpenAi).await;
    sick.set_health(Some(503));
    let research = "\"research\"";
    let mut env = Env::new(1).await.with_config(&format!(
        "[executor]\nhealth_every_ms = 100\nunhealthy_after = 2\nhealthy_after = 2\n\n{}{}",
        bidders_toml(&bargain, &premium),
        model_toml("sick", &sick.base_url(), research, (1, 1), ""),
    ));
    let (_children, base, http, _) = support::api_stack(&mut env, &[]).await;

    // The executor reports sick unhealthy; the API's modelHealth shows it once it has read
    // the report.
    env.read_until(
        &env.names.executor_status,
        Duration::from_secs(60),
        "sick marked unhealthy",
        |s: &[triad_domain::ExecutorStatus]| {
            s.iter().any(|s| {
                matches!(&s.body, triad_domain::StatusBody::HealthTransition(h) if h.model_id == "sick")
            })
        },
    )
    .await;
    let query = r#"query { modelHealth(modelId: "sick") { modelId zone executorId healthy healthReason probes } }"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        let data = graphql(&http, &base, query, json!({})).await;
        if !data["modelHealth"].as_array().unwrap().is_empty() {
            break data["modelHealth"][0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "modelHealth stayed empty"
        );
        // The report is in Kafka; the API's follower is at most a fetch behind.
        tokio::task::yield_now().await;
    };
    assert_eq!(health["healthy"], false);
    assert_eq!(health["zone"], "US-EAST");
    assert_eq!(health["probes"], 2);
    assert!(
        health["healthReason"].as_str().unwrap().contains("503"),
        "{health}"
    );

    // One auction: GraphQL's auctions(workflowId) shows what the event store recorded.
    let wf = triad_workflow::Workflow::new("one-auction")
        .zones(["US-EAST"])
        .task(
            triad_workflow::Task::new("t", "Summarise the tides")
                .specialties(["research"])
                .max_tokens(100)
                .auction(true),
        );
    env.submit("wf-graphql-auction", wf.to_command()).await;
    let events = env
        .events_until_finished(&["wf-graphql-auction".to_owned()], Duration::from_secs(60))
        .await;
    let closed = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::AuctionClosed(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    // The SSE stream ends after the workflow's final event is in the read model.
    let sse = support::get_text(
        &http,
        &format!("{base}/v1/workflows/wf-graphql-auction/events"),
    )
    .await;
    assert!(sse.contains("event: workflow.complete"), "{sse}");
    assert!(sse.contains("event: auction.closed"), "{sse}");
    let query = r#"query($id: String!) {
        auctions(workflowId: $id) { taskId attempt winner priceMicros reason bids { modelId status standing } } }"#;
    let data = graphql(&http, &base, query, json!({"id": "wf-graphql-auction"})).await;
    let auctions = data["auctions"].as_array().unwrap();
    assert_eq!(auctions.len(), 1, "{data}");
    let a = &auctions[0];
    assert_eq!(a["taskId"], "t");
    assert_eq!(a["winner"], json!(closed.winner));
    assert_eq!(a["winner"], "bargain");
    assert_eq!(a["priceMicros"], json!(closed.price_micros));
    assert_eq!(a["reason"], closed.reason);
    let mut bidders: Vec<(String, String)> = a["bids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["modelId"].as_str().unwrap().to_owned(),
                b["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    bidders.sort();
    assert_eq!(
        bidders,
        [
            ("bargain".to_owned(), "WON".to_owned()),
            ("premium".to_owned(), "ACCEPTED".to_owned())
        ]
    );
}
