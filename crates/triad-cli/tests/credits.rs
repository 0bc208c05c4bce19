//! TRIAD credits and hard budgets on the real stack (`triad process`, `triad ledger`,
//! `triad execute` as child processes; a local server speaks the OpenAI wire protocol for a
//! priced model):
//! - a workflow that names an account runs only on a reservation of its worst case, which
//!   `triad estimate` predicts; what it burns is what its calls cost, and the rest goes back;
//! - a worst case above the balance, or an account without credits, rejects the workflow
//!   naming the account; a provider that bills past the estimate exhausts the reservation and
//!   the remaining tasks are skipped with that reason;
//! - credits cannot be transferred; the supply and every account check out from the topic
//!   alone (`triad audit ledger`);
//! - concurrent workflows on one account never overspend, and `kill -9` of the ledger at
//!   several points loses and duplicates nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use support::{Env, by_workflow, cli, cli_ok, kill};
use triad_domain::{CreditsEvent, EventBody, WorkflowEvent};
use triad_testkit::{Behaviour, FakeProvider, Flavor};
use triad_workflow::{Task, Workflow};

/// One priced OpenAI-compatible model: 10 000 µcredits per 1K input tokens, 20 000 per 1K
/// output tokens.
use support::paid_model_config as config;

fn two_steps(account: &str, max_tokens: i32) -> Workflow {
    Workflow::new("budgeted")
        .zones(["US-EAST"])
        .account(account)
        .task(
            Task::new("draft", "Write two sentences about tides")
                .model("paid")
                .max_tokens(max_tokens)
                .max_attempts(2),
        )
        .task(
            Task::new("shorten", "Shorten: {draft.output}")
                .model("paid")
                .depends_on(["draft"])
                .max_tokens(max_tokens)
                .max_attempts(1),
        )
}

/// The workflow's events until its reservation is settled (or it was rejected).
async fn until_settled(env: &Env, workflows: &[String]) -> BTreeMap<String, Vec<WorkflowEvent>> {
    let events = env
        .read_until(
            &env.names.events,
            Duration::from_secs(120),
            "every workflow to be settled or rejected",
            |events: &[WorkflowEvent]| {
                let done: BTreeSet<&str> = events
                    .iter()
                    .filter(|e| {
                        matches!(
                            e.body,
                            EventBody::BudgetSettled(_) | EventBody::WorkflowRejected(_)
                        )
                    })
                    .map(|e| e.meta.workflow_id.as_str())
                    .collect();
                workflows.iter().all(|w| done.contains(w.as_str()))
            },
        )
        .await;
    by_workflow(&events)
}

fn find<'a, T>(
    events: &'a [WorkflowEvent],
    pick: impl Fn(&'a EventBody) -> Option<&'a T>,
) -> &'a T {
    events
        .iter()
        .find_map(|e| pick(&e.body))
        .unwrap_or_else(|| {
            panic!(
                "not found in {:?}",
                events
                    .iter()
                    .map(|e| &e.meta.event_type)
                    .collect::<Vec<_>>()
            )
        })
}

/// What a workflow's model calls cost, from its routing decisions and discarded results.
fn spent(events: &[WorkflowEvent]) -> i64 {
    events
        .iter()
        .map(|e| match &e.body {
            EventBody::TaskRouted(r) => r.decision.calls.iter().map(|c| c.cost_micros).sum(),
            EventBody::TaskResultDiscarded(d) => d.cost_micros,
            _ => 0,
        })
        .sum()
}

fn supply(env: &Env) -> Value {
    let (out, _) = cli_ok(env, &["credits", "supply", "--json"], &[]);
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_reserve_the_worst_case_block_what_they_cannot_cover_and_settle() {
    let provider = FakeProvider::start(Flavor::OpenAi).await;
    let env = Env::new(2).await.with_config(&config(&provider.base_url()));
    let _processor = env.spawn("processor", &["process"]);
    let _ledger = env.spawn("ledger", &["ledger"]);
    let _executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);

    let (out, _) = cli_ok(
        &env,
        &[
            "credits",
            "issue",
            "acct-a",
            "0.05",
            "--reason",
            "welcome grant",
        ],
        &[],
    );
    assert!(out.contains("balance 0.050000 credits"), "{out}");

    // What `triad estimate` says the worst case is, the ledger reserves.
    let file = env.dir().join("budgeted.json");
    let doc = serde_json::to_string(&two_steps("acct-a", 100)).unwrap();
    std::fs::write(&file, &doc).unwrap();
    let (out, _) = cli_ok(&env, &["estimate", file.to_str().unwrap(), "--json"], &[]);
    let estimate: Value = serde_json::from_str(&out).unwrap();
    let worst = estimate["worst_case_micros"].as_i64().unwrap();
    assert!(worst > 0 && worst < 50_000, "{estimate}");

    // The provider ignores max_tokens once: 400 words where 5 were allowed.
    let essay = vec!["tide"; 400].join(" ");
    let ids: Vec<String> = ["wf-fits", "wf-too-big", "wf-no-credits", "wf-overbilled"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    env.submit(&ids[0], two_steps("acct-a", 100).to_command())
        .await;
    let fits = until_settled(&env, &ids[..1]).await;
    env.submit(&ids[1], two_steps("acct-a", 4_000).to_command())
        .await;
    env.submit(&ids[2], two_steps("acct-nobody", 100).to_command())
        .await;
    // One after the other, so the account's entries have one order.
    until_settled(&env, &ids[1..3]).await;
    provider.push(Behaviour::Answer(Some(essay)));
    env.submit(&ids[3], two_steps("acct-a", 5).to_command())
        .await;
    let all = until_settled(&env, &ids).await;

    // Fits: reserved the estimate's worst case, completed, burned exactly its calls' cost.
    let events = &fits["wf-fits"];
    let types: Vec<&str> = events.iter().map(|e| e.meta.event_type.as_str()).collect();
    assert_eq!(types[0], "BudgetRequested", "{types:?}");
    assert_eq!(types[1], "WorkflowAccepted", "{types:?}");
    let requested = find(events, |b| match b {
        EventBody::BudgetRequested(r) => Some(r),
        _ => None,
    });
    assert_eq!(requested.budget.reserved_micros, worst);
    assert!(types.contains(&"WorkflowCompleted"), "{types:?}");
    let settled = find(events, |b| match b {
        EventBody::BudgetSettled(s) => Some(s),
        _ => None,
    });
    let cost = spent(events);
    assert!(cost > 0);
    assert_eq!(settled.burned_micros, cost);
    assert_eq!(settled.released_micros, worst - cost);

    // Too big and no credits: rejected, naming the account and the figures.
    for (id, says) in [
        ("wf-too-big", "exceeds the balance"),
        ("wf-no-credits", "has no credits"),
    ] {
        let rejected = find(&all[id], |b| match b {
            EventBody::WorkflowRejected(r) => Some(r),
            _ => None,
        });
        assert_eq!(rejected.field.as_deref(), Some("account"), "{id}");
        assert!(rejected.reason.contains(says), "{id}: {}", rejected.reason);
        assert!(
            !all[id]
                .iter()
                .any(|e| matches!(e.body, EventBody::TaskDispatched(_))),
            "{id} dispatched work without a reservation"
        );
    }

    // Over-billed: the draft cost far more than its worst case, so the next attempt does not
    // fit; the rest is skipped with the reason and the burn stops at the reservation.
    let events = &all["wf-overbilled"];
    let skipped = find(events, |b| match b {
        EventBody::TaskSkipped(s) => Some(s),
        _ => None,
    });
    assert_eq!(skipped.task_id, "shorten");
    assert!(
        skipped.reason.starts_with("budget exhausted"),
        "{}",
        skipped.reason
    );
    let failed = find(events, |b| match b {
        EventBody::WorkflowFailed(f) => Some(f),
        _ => None,
    });
    assert!(
        failed.reason.starts_with("budget exhausted"),
        "{}",
        failed.reason
    );
    let reserved = find(events, |b| match b {
        EventBody::WorkflowAccepted(a) => a.budget.as_ref(),
        _ => None,
    })
    .reserved_micros;
    let settled = find(events, |b| match b {
        EventBody::BudgetSettled(s) => Some(s),
        _ => None,
    });
    assert!(spent(events) > reserved);
    assert_eq!(settled.burned_micros, reserved);
    assert_eq!(settled.released_micros, 0);

    // A draft within its limits whose text is long (40 words of 30 letters): the next
    // prompt is far longer than the reservation foresaw, so the executor does not call the
    // paid model — its worst case exceeds the attempt's allowance — and falls back to the
    // free embedded one.
    let long_words = vec!["x".repeat(30); 40].join(" ");
    provider.push(Behaviour::Answer(Some(long_words)));
    let calls_before = provider.requests().len();
    let long = ["wf-long-draft".to_owned()];
    env.submit(&long[0], two_steps("acct-a", 50).to_command())
        .await;
    let long_events = until_settled(&env, &long).await;
    let events = &long_events["wf-long-draft"];
    let routed = find(events, |b| match b {
        EventBody::TaskRouted(r) if r.task_id == "shorten" => Some(r),
        _ => None,
    });
    assert_eq!(routed.decision.model_id, "triad-local");
    assert!(
        routed
            .decision
            .reason
            .contains("exceeds the attempt's allowance"),
        "{}",
        routed.decision.reason
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.body, EventBody::WorkflowCompleted(_)))
    );
    assert_eq!(
        provider.requests().len(),
        calls_before + 1,
        "only the draft reached the paid model"
    );
    let long_settled = find(events, |b| match b {
        EventBody::BudgetSettled(s) => Some(s),
        _ => None,
    });
    assert_eq!(long_settled.burned_micros, spent(events));

    // The account and the supply, from the ledger topic.
    let (out, _) = cli_ok(&env, &["credits", "show", "acct-a", "--json"], &[]);
    let account: Value = serde_json::from_str(&out).unwrap();
    let burned = cost + reserved + long_settled.burned_micros;
    assert_eq!(account["totals"]["burned_micros"], burned);
    assert_eq!(account["totals"]["reserved_micros"], 0);
    assert_eq!(account["totals"]["balance_micros"], 50_000 - burned);
    let kinds: Vec<&str> = account["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "CreditsIssued",
            "CreditsReserved",
            "CreditsBurned",
            "ReservationReleased",
            "ReservationRefused",
            "CreditsReserved",
            "CreditsBurned",
            "ReservationReleased",
            "CreditsReserved",
            "CreditsBurned",
            "ReservationReleased"
        ]
    );
    let s = supply(&env);
    assert_eq!(s["issued_micros"], 50_000);
    assert_eq!(s["burned_micros"], burned);
    assert_eq!(s["circulating_micros"], 50_000 - burned);
    let (out, _) = cli_ok(&env, &["audit", "ledger"], &[]);
    assert!(out.contains("ledger verified"), "{out}");

    // There is no transfer.
    let out = cli(&env, &["credits", "transfer", "acct-a", "acct-b", "1"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("non_transferable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workflows_never_overspend_and_the_ledger_survives_kill_9() {
    const WORKFLOWS: usize = 16;
    let provider = FakeProvider::start(Flavor::OpenAi).await;
    let env = Env::new(3).await.with_config(&config(&provider.base_url()));
    let _processor = env.spawn("processor", &["process"]);
    let _executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let mut ledger = env.spawn("ledger-0", &["ledger"]);

    // Enough for about six worst cases at once: most workflows wait for others to settle or
    // are refused, depending on timing; none may overspend either way.
    let worst = {
        let file = env.dir().join("one.json");
        std::fs::write(
            &file,
            serde_json::to_string(&two_steps("acct-c", 100)).unwrap(),
        )
        .unwrap();
        let (out, _) = cli_ok(&env, &["estimate", file.to_str().unwrap(), "--json"], &[]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["worst_case_micros"].as_i64().unwrap()
    };
    let grant = worst * 6;
    cli_ok(
        &env,
        &[
            "credits",
            "issue",
            "acct-c",
            &format!("{grant}u"),
            "--reason",
            "load test",
        ],
        &[],
    );
    let ids: Vec<String> = (0..WORKFLOWS).map(|i| format!("wf-load-{i:02}")).collect();
    for id in &ids {
        env.submit(id, two_steps("acct-c", 100).to_command()).await;
    }

    // Kill -9 the ledger after it wrote 4, 12 and 24 events, restarting it each time.
    for (round, after) in [4usize, 12, 24].into_iter().enumerate() {
        env.read_until(
            &env.names.credits,
            Duration::from_secs(120),
            "ledger events",
            |events: &[CreditsEvent]| events.len() >= after,
        )
        .await;
        kill(&mut ledger.0);
        ledger = env.spawn(&format!("ledger-{}", round + 1), &["ledger"]);
    }
    let per_workflow = until_settled(&env, &ids).await;

    // The ledger: no event twice, every workflow reserved at most once and settled once.
    let (out, _) = cli_ok(&env, &["credits", "show", "acct-c", "--json"], &[]);
    let account: Value = serde_json::from_str(&out).unwrap();
    let entries = account["entries"].as_array().unwrap();
    let mut ids_seen = BTreeSet::new();
    let mut per_kind: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in entries {
        assert!(
            ids_seen.insert(e["event_id"].as_str().unwrap().to_owned()),
            "{e}"
        );
        let t = &e["totals"];
        let (issued, balance, reserved, burned) = (
            t["issued_micros"].as_i64().unwrap(),
            t["balance_micros"].as_i64().unwrap(),
            t["reserved_micros"].as_i64().unwrap(),
            t["burned_micros"].as_i64().unwrap(),
        );
        assert!(balance >= 0 && reserved >= 0, "{e}");
        assert_eq!(issued, balance + reserved + burned, "{e}");
        if let Some(body) = e["body"].as_object() {
            let (kind, inner) = body.iter().next().unwrap();
            if let Some(wf) = inner["workflow_id"].as_str() {
                *per_kind.entry((wf.to_owned(), kind.clone())).or_default() += 1;
            }
        }
    }
    assert!(per_kind.values().all(|n| *n == 1), "{per_kind:?}");

    let mut completed = 0;
    let mut burned_total = 0;
    for id in &ids {
        let events = &per_workflow[id];
        let terminal = events.iter().find(|e| e.body.is_terminal()).unwrap();
        match &terminal.body {
            EventBody::WorkflowCompleted(_) => {
                completed += 1;
                let settled = find(events, |b| match b {
                    EventBody::BudgetSettled(s) => Some(s),
                    _ => None,
                });
                assert_eq!(settled.burned_micros, spent(events), "{id}");
                assert_eq!(
                    per_kind.get(&(id.clone(), "CreditsBurned".to_owned())),
                    Some(&1),
                    "{id}"
                );
                burned_total += settled.burned_micros;
            }
            EventBody::WorkflowRejected(r) => {
                assert!(
                    r.reason.contains("exceeds the balance"),
                    "{id}: {}",
                    r.reason
                )
            }
            other => panic!("{id} ended with {other:?}"),
        }
        // Settled exactly once in the event store too.
        let settlements = events
            .iter()
            .filter(|e| matches!(e.body, EventBody::BudgetSettled(_)))
            .map(|e| e.meta.event_id.as_str())
            .collect::<BTreeSet<_>>();
        assert!(settlements.len() <= 1, "{id}");
    }
    assert!(completed >= 6, "only {completed} workflows completed");
    assert_eq!(account["totals"]["burned_micros"], burned_total);
    assert_eq!(account["totals"]["reserved_micros"], 0);
    assert_eq!(account["totals"]["balance_micros"], grant - burned_total);
    let (out, _) = cli_ok(&env, &["audit", "ledger"], &[]);
    assert!(out.contains("ledger verified"), "{out}");
    let refused: usize = per_kind
        .keys()
        .filter(|(_, k)| k == "ReservationRefused")
        .count();
    assert_eq!(completed + refused, WORKFLOWS);
}

/// POSTs GraphQL `query` with `variables`, with an optional bearer token.
async fn graphql(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = http
        .post(format!("{base}/graphql"))
        .json(&serde_json::json!({"query": query, "variables": variables}));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_through_rest_and_graphql_issue_for_the_operator_only_and_never_transfer() {
    let provider = FakeProvider::start(Flavor::OpenAi).await;
    let mut env = Env::new(1).await.with_config(&config(&provider.base_url()));
    let (_children, base, http, _) = support::api_stack(&mut env, &[]).await;
    // `http` holds an operator's key (tenant `ops`); a tenant admin is not an operator.
    let token = &support::api_key(&env, "ops", "operator");
    let admin = &support::api_key(&env, "ops", "tenant_admin");
    let _ledger = env.spawn("ledger", &["ledger"]);
    let issue_url = format!("{base}/v1/accounts/ops:api/credits");
    let body =
        serde_json::json!({"amount_micros": 40_000, "kind": "CAPACITY", "reason": "served tokens"});

    // Without credentials: 401; without the operator role: 403; nothing issued.
    let r = reqwest::Client::new()
        .post(&issue_url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = http
        .post(&issue_url)
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "forbidden");
    // Invalid input names the field.
    let r = http
        .post(&issue_url)
        .bearer_auth(token)
        .json(&serde_json::json!({"amount_micros": 0, "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "amount_micros", "{problem}");
    // The operator issues: 201 with the ledger's event.
    let r = http
        .post(&issue_url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let issued: Value = r.json().await.unwrap();
    assert_eq!(
        issued["event"]["totals"]["balance_micros"], 40_000,
        "{issued}"
    );
    assert_eq!(issued["event"]["body"]["CreditsIssued"]["kind"], "CAPACITY");

    // GraphQL: the same rule for issueCredits; transfers are refused everywhere.
    let mutation = r#"mutation($a: String!, $n: Long!) {
        issueCredits(account: $a, amount: $n, kind: "DATA", reason: "labelled set") {
            eventType amount balance kind } }"#;
    let denied = graphql(
        &http,
        &base,
        Some(admin),
        mutation,
        serde_json::json!({"a": "ops:api", "n": "10000"}),
    )
    .await;
    assert_eq!(support::graphql_code(&denied), "FORBIDDEN", "{denied}");
    let granted = graphql(
        &http,
        &base,
        Some(token),
        mutation,
        serde_json::json!({"a": "ops:api", "n": "10000"}),
    )
    .await;
    let entry = &granted["data"]["issueCredits"];
    assert_eq!(entry["eventType"], "CreditsIssued", "{granted}");
    assert_eq!(entry["balance"], 50_000);
    let refused = graphql(
        &http,
        &base,
        Some(token),
        r#"mutation { transferCredits(from: "ops:api", to: "acct-b", amount: "1") }"#,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(support::graphql_code(&refused), "NON_TRANSFERABLE");
    let r = http
        .post(format!("{base}/v1/accounts/ops:api/transfers"))
        .bearer_auth(token)
        .json(&serde_json::json!({"to": "acct-b", "amount_micros": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "non_transferable");

    // A workflow submitted over REST on the account: reserved, run, settled; the API's view
    // of the account follows.
    let doc = serde_json::to_value(two_steps("ops:api", 100)).unwrap();
    assert_eq!(doc["account"], "ops:api");
    let (status, submitted) =
        support::post_json(&http, &format!("{base}/v1/workflows"), &doc).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["workflow_id"].as_str().unwrap().to_owned();
    let per_workflow = until_settled(&env, std::slice::from_ref(&id)).await;
    let burned = find(&per_workflow[&id], |b| match b {
        EventBody::BudgetSettled(s) => Some(s),
        _ => None,
    })
    .burned_micros;
    assert!(burned > 0);
    let query = r#"query($a: String!) { account(id: $a) { balance reserved burned issued entries { eventType workflowId amount } }
        creditSupply { issued burned circulating } }"#;
    // The API follows the ledger; the settlement's last event may still be on its way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = graphql(
            &http,
            &base,
            None,
            query,
            serde_json::json!({"a": "ops:api"}),
        )
        .await;
        if answer["data"]["account"]["entries"]
            .as_array()
            .map_or(0, Vec::len)
            == 5
        {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer}");
        // Every ledger event is in Kafka; the API's follower is at most a fetch behind.
        env.read_until(
            &env.names.credits,
            Duration::from_secs(5),
            "the ledger's events",
            |e: &[CreditsEvent]| e.len() >= 5,
        )
        .await;
    };
    let account = &answer["data"]["account"];
    assert_eq!(account["burned"], burned);
    assert_eq!(account["reserved"], 0);
    assert_eq!(account["balance"], 50_000 - burned);
    assert_eq!(account["issued"], 50_000);
    let types: Vec<&str> = account["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "CreditsIssued",
            "CreditsIssued",
            "CreditsReserved",
            "CreditsBurned",
            "ReservationReleased"
        ]
    );
    assert_eq!(answer["data"]["creditSupply"]["burned"], burned);
    let (status, r) = support::get_json(&http, &format!("{base}/v1/accounts/ops:api")).await;
    assert_eq!(status, 200);
    assert_eq!(r["totals"]["burned_micros"], burned);
    let (status, r) = support::get_json(&http, &format!("{base}/v1/accounts/nobody")).await;
    assert_eq!(status, 404);
    assert_eq!(r["code"], "account_not_found");
    let (_, supply) = support::get_json(&http, &format!("{base}/v1/credits/supply")).await;
    assert_eq!(supply["problems"], serde_json::json!([]));
    assert_eq!(supply["circulating_micros"], 50_000 - burned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notary_signs_the_ledger_and_the_audit_checks_its_checkpoints() {
    let mut env = Env::new(1).await;
    support::sealing(&mut env, &[("executor-US-EAST", "US-EAST", None)]);
    env.extra_env.push((
        "TRIAD_SOVEREIGNTY__CHECKPOINT_IDLE_MS".to_owned(),
        "200".to_owned(),
    ));
    let _ledger = env.spawn("ledger", &["ledger"]);
    let _notary = env.spawn("notary", &["notary"]);
    for (amount, reason) in [("1", "grant"), ("2.5", "served capacity")] {
        cli_ok(
            &env,
            &["credits", "issue", "acct-n", amount, "--reason", reason],
            &[],
        );
    }
    // The notary checkpoints the quiet partition: both events under a signed checkpoint.
    let checkpoints = env
        .read_until(
            &env.names.credits_checkpoints,
            Duration::from_secs(60),
            "a checkpoint over both ledger events",
            |cps: &[triad_domain::CustodyCheckpoint]| cps.last().is_some_and(|c| c.to_offset >= 2),
        )
        .await;
    let last = checkpoints.last().unwrap().clone();
    assert_eq!(last.stream, "credits");
    let (out, _) = cli_ok(&env, &["audit", "ledger"], &[]);
    assert!(
        out.contains("signed checkpoints cover offsets 0..2"),
        "{out}"
    );
    assert!(out.contains("ledger verified"), "{out}");

    // A forged checkpoint (someone with write access to the topic rewrites the last range's
    // root) is found.
    let forged = triad_domain::CustodyCheckpoint {
        root: "00".repeat(32),
        ..last.clone()
    };
    env.producer
        .send_record(
            &env.codec,
            &env.names.credits_checkpoints,
            Some(0),
            &forged.key(),
            &forged,
        )
        .await
        .unwrap();
    let out = cli(&env, &["audit", "ledger"], &[]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("does not continue the chain"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ledger_commands_are_dead_lettered_with_their_reason_and_nothing_stops() {
    let env = Env::new(1).await;
    let _ledger = env.spawn("ledger", &["ledger"]);
    let command = |amount: i64, account: &str| triad_domain::CreditsCommand {
        command_id: uuid::Uuid::new_v4().to_string(),
        account: account.to_owned(),
        issued_at: triad_kafka::now_micros(),
        actor: Some("intruder".to_owned()),
        body: triad_domain::CreditsCommandBody::IssueCredits(triad_domain::IssueCredits {
            amount_micros: amount,
            kind: triad_domain::CreditKind::Grant,
            reason: "written past the edge".to_owned(),
        }),
        schema_version: triad_domain::CREDITS_SCHEMA_VERSION,
    };
    // Past the edge's validation, straight onto the inbox: a non-positive amount, an
    // account id the ledger cannot key, and bytes that are no Avro record at all.
    for bad in [command(0, "acct-d"), command(5, "no spaces allowed")] {
        env.producer
            .send_record(
                &env.codec,
                &env.names.credits_inbox,
                Some(0),
                &bad.account,
                &bad,
            )
            .await
            .unwrap();
    }
    env.producer
        .send_to(
            &env.names.credits_inbox,
            Some(0),
            Some(b"acct-d"),
            Some(b"not avro"),
            &[],
        )
        .await
        .unwrap();
    // Then a good one, which the ledger still applies.
    cli_ok(
        &env,
        &[
            "credits",
            "issue",
            "acct-d",
            "1",
            "--reason",
            "after the bad ones",
        ],
        &[],
    );
    let letters = env
        .read_until(
            &env.names.dlq,
            Duration::from_secs(30),
            "three dead letters",
            |l: &[triad_domain::DeadLetter]| l.len() >= 3,
        )
        .await;
    let reasons: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l.error_kind.as_str(), l.error.as_str()))
        .collect();
    assert!(
        letters
            .iter()
            .all(|l| l.source_topic == env.names.credits_inbox),
        "{reasons:?}"
    );
    assert_eq!(reasons[0].0, "invalid", "{reasons:?}");
    assert!(
        reasons[0].1.contains("amount_micros: must be positive"),
        "{reasons:?}"
    );
    assert!(reasons[1].1.contains("account:"), "{reasons:?}");
    assert_eq!(reasons[2].0, "decode", "{reasons:?}");
    let (out, _) = cli_ok(&env, &["credits", "show", "acct-d", "--json"], &[]);
    let account: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(account["totals"]["issued_micros"], 1_000_000);
    assert_eq!(account["entries"].as_array().unwrap().len(), 1);
}
