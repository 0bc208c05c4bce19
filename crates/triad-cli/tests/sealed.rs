//! Sealed payloads through the real flow (`sovereignty.seal = true`): `triad submit` seals
//! the prompts, the executor inside the zone opens them and seals the outputs, and the
//! canary — a unique secret in a prompt, echoed into every output — is afterwards found in
//! clear in no Kafka topic (the dead-letter topic included), no PostgreSQL table and no log
//! file, while the submitter inside the zone reads the answer. A reader outside the zones
//! sees only that it may not open it. A plaintext submission (sealing off) is found by the
//! same scan: the scan can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use support::{Env, after, cli as run, cli_ok as ok, pg, sealing, wait_for};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every record (key, value, header values) of every topic of this installation, by topic.
async fn topic_bytes(env: &Env) -> Vec<(String, Vec<Vec<u8>>)> {
    let consumer: BaseConsumer = triad_kafka::client::reader_config(&env.kafka)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut topics: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(&env.prefix))
        .collect();
    topics.sort();
    let mut out = Vec::new();
    for topic in topics {
        let records = triad_kafka::consume::read_all(&env.kafka, &topic, Duration::from_secs(60))
            .await
            .unwrap();
        let mut blobs = Vec::new();
        for m in &records {
            blobs.extend(m.key().map(<[u8]>::to_vec));
            blobs.extend(m.payload().map(<[u8]>::to_vec));
            if let Some(h) = m.headers() {
                blobs.extend(h.iter().filter_map(|h| h.value.map(<[u8]>::to_vec)));
            }
        }
        out.push((topic, blobs));
    }
    out
}

/// Every row of every table of `schema` and of the blob store, as text.
async fn table_text(pg: &tokio_postgres::Client, schema: &str) -> Vec<(String, String)> {
    let tables = pg
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables \
             WHERE (table_schema = $1 OR (table_schema = 'public' AND table_name = 'triad_blobs')) \
             AND table_type = 'BASE TABLE'",
            &[&schema],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let (s, n): (String, String) = (t.get(0), t.get(1));
        // Identifiers from the catalogue, quoted: `format!` on trusted names in a test.
        let rows = pg
            .query(&format!("SELECT t::text FROM \"{s}\".\"{n}\" t"), &[])
            .await
            .unwrap();
        let text: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        out.push((format!("{s}.{n}"), text.join("\n")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_never_appears_in_clear_outside_its_zone() {
    let mut env = Env::new(2).await;
    let dir = env.dir().to_path_buf();
    let schema = format!("it_{}", env.group.trim_start_matches("it-"));
    // The operator enrols the submitting edge and one executor per zone used.
    sealing(
        &mut env,
        &[
            ("edge-US-EAST", "US-EAST", None),
            ("executor-US-EAST", "US-EAST", None),
            ("executor-EU-WEST", "EU-WEST", None),
        ],
    );
    env.extra_env.extend([
        ("TRIAD_SOVEREIGNTY__ZONE".into(), "US-EAST".into()),
        ("TRIAD_PROJECTION__SCHEMA".into(), schema.clone()),
        // Chatty logs make the log-file check meaningful.
        ("TRIAD_LOG__FILTER".into(), "info".into()),
    ]);
    // An executor whose key is not enrolled refuses to start, saying how to enrol it.
    let refused = run(&env, &["execute", "--zone", "US-WEST"], &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("executor-US-WEST") && stderr.contains("triad keys enrol"),
        "{stderr}"
    );

    let _processor = env.spawn("processor", &["process"]);
    let _notary = env.spawn("notary", &["notary"]);
    let _east = env.spawn("executor-us-east", &["execute", "--zone", "US-EAST"]);
    let _eu = env.spawn("executor-eu-west", &["execute", "--zone", "EU-WEST"]);
    let _projection = env.spawn("projection", &["project"]);
    let port = support::free_port();
    let _api = {
        let mut api = env.triad(&["api"]);
        api.env("TRIAD_API__LISTEN", format!("127.0.0.1:{port}"))
            .stderr(std::fs::File::create(env.log_path("api")).unwrap());
        support::Guarded(api.spawn().unwrap())
    };

    let secret = format!("CANARY{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let eu_secret = format!("EUONLY{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let clear_secret = format!("PLAIN{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let document = |name: &str, zone: &str, secret: &str| {
        serde_json::json!({
            "name": name,
            "zones": [zone],
            "tasks": [
                {"id": "reveal", "prompt": format!("Echo: the secret is {secret}")},
                {"id": "shout", "prompt": "Uppercase: {reveal.output}", "depends_on": ["reveal"]}
            ]
        })
        .to_string()
    };
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let us = file("us.json", document("canary", "US-EAST", &secret));
    let eu = file("eu.json", document("eu-canary", "EU-WEST", &eu_secret));
    let clear = file("clear.json", document("clear", "US-EAST", &clear_secret));

    // Inside its zone, the submitter reads the answer: sealing lost nothing.
    let (stdout, submit_log) = ok(
        &env,
        &["submit", us.to_str().unwrap(), "--timeout", "120"],
        &[],
    );
    assert!(
        stdout.contains(&format!("output of shout:\nTHE SECRET IS {secret}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("[sealed, "),
        "events show sealed payloads: {stdout}"
    );
    let workflow_id = after(&stdout, "submitted ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // An EU-only workflow completes in EU-WEST, and the US-EAST submitter may not read it.
    let (eu_stdout, eu_log) = ok(
        &env,
        &["submit", eu.to_str().unwrap(), "--timeout", "120"],
        &[],
    );
    assert!(
        eu_stdout.contains("sovereignty violation") && eu_stdout.contains("EU-WEST"),
        "{eu_stdout}"
    );
    assert!(!eu_stdout.contains(&eu_secret), "{eu_stdout}");
    // The control: the same flow with sealing off carries the secret in clear.
    let (clear_stdout, _) = ok(
        &env,
        &["submit", clear.to_str().unwrap(), "--timeout", "120"],
        &[("TRIAD_SOVEREIGNTY__SEAL", "false")],
    );
    assert!(clear_stdout.contains(&clear_secret), "{clear_stdout}");

    // Through the API (node edge-US-EAST too): it seals what it is given.
    let base = format!("http://127.0.0.1:{port}");
    // An operator: the workflows submitted with `triad submit` (the operator's door) have no
    // tenant, so only operators read them.
    let http = support::client(&support::api_key(&env, "ops", "operator"));
    let api_secret = format!("APIONLY{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let submitted = loop {
        let r = http
            .post(format!("{base}/v1/workflows"))
            .header("content-type", "application/json")
            .body(document("api-canary", "US-EAST", &api_secret))
            .send()
            .await;
        if let Ok(r) = r.and_then(reqwest::Response::error_for_status) {
            break r.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API never took the workflow: {}",
            support::read_log(&env.log_path("api"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let api_workflow = submitted["workflow_id"].as_str().unwrap().to_owned();

    // The read model has caught up with all four workflows.
    let pg = pg().await;
    wait_for(
        &pg,
        &format!("SELECT count(*) FROM {schema}.workflows WHERE status = 'COMPLETED'"),
        "four completed workflows in the read model",
        Duration::from_secs(120),
        |c| c >= 4,
    )
    .await;
    let task = |view: &serde_json::Value, id: &str| {
        view["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task_id"] == id)
            .unwrap()
            .clone()
    };
    let get = |id: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/v1/workflows/{id}"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    // Inside the zone the API shows the answer; it says where a sealed output opens.
    let shout = task(&get(api_workflow.clone()).await, "shout");
    assert_eq!(
        shout["output"],
        format!("THE SECRET IS {api_secret}"),
        "{shout}"
    );
    assert_eq!(shout["sealed_to"], serde_json::json!(["US-EAST"]));
    // An EU-only output: not shown in US-EAST.
    let eu_workflow = after(&eu_stdout, "submitted ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let eu_shout = task(&get(eu_workflow).await, "shout");
    assert_eq!(eu_shout["output"], serde_json::Value::Null, "{eu_shout}");
    assert_eq!(eu_shout["sealed_to"], serde_json::json!(["EU-WEST"]));

    let topics = topic_bytes(&env).await;
    let found = |secret: &str| -> Vec<String> {
        topics
            .iter()
            .filter(|(_, blobs)| blobs.iter().any(|b| contains(b, secret)))
            .map(|(t, _)| t.clone())
            .collect()
    };
    // The scan reads what the flow wrote: the workflow id, sealed payloads, the control.
    for (topic, needle) in [
        (&env.names.inbox, "TRIAD-SEALED:1:"),
        (&env.names.events, workflow_id.as_str()),
        (&env.names.workflow_keys, workflow_id.as_str()),
    ] {
        let (_, blobs) = topics.iter().find(|(t, _)| t == topic).unwrap();
        assert!(
            blobs.iter().any(|b| contains(b, needle)),
            "{needle} in {topic}"
        );
    }
    assert!(
        found(&clear_secret).contains(&env.names.inbox),
        "the unsealed control is visible: {:?}",
        found(&clear_secret)
    );
    assert!(
        topics.iter().any(|(t, _)| *t == env.names.dlq),
        "the dead-letter topic is scanned too: {:?}",
        topics.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    for s in [&secret, &eu_secret] {
        assert_eq!(
            found(s),
            Vec::<String>::new(),
            "{s} in clear on these topics"
        );
    }

    let tables = table_text(&pg, &schema).await;
    // `bytea` columns render as hex in a row's text: look for both spellings.
    let in_tables = |secret: &str| -> Vec<&String> {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        tables
            .iter()
            .filter(|(_, text)| text.contains(secret) || text.contains(&hex))
            .map(|(t, _)| t)
            .collect()
    };
    assert!(
        tables.iter().any(|(_, text)| text.contains(&workflow_id)),
        "the scan reads the read model"
    );
    assert!(
        !in_tables(&clear_secret).is_empty(),
        "the unsealed control is visible in PostgreSQL"
    );
    for s in [&secret, &eu_secret, &api_secret] {
        let leaks = in_tables(s);
        assert!(leaks.is_empty(), "{s} in clear in {leaks:?}");
    }

    let mut logs = vec![
        ("submit".to_owned(), submit_log),
        ("submit-eu".to_owned(), eu_log),
    ];
    for name in [
        "processor",
        "executor-us-east",
        "executor-eu-west",
        "projection",
    ] {
        logs.push((name.to_owned(), support::read_log(&env.log_path(name))));
    }
    assert!(
        logs.iter()
            .any(|(_, l)| l.contains("sovereignty kernel ready")),
        "the logs are read (and the executors started their kernels)"
    );
    for (name, log) in &logs {
        for s in [&secret, &eu_secret, &api_secret] {
            assert!(!log.contains(s.as_str()), "{s} in clear in the {name} log");
        }
    }
    // The audit replays the workflow from the log: every operation signed by the enrolled
    // US-EAST executor over the logged bytes, inside US-EAST.
    let (report, _) = ok(&env, &["audit", "verify", &workflow_id], &[]);
    assert!(
        report.contains(
            "verified: all 2 operations signed by enrolled executors and stayed in US-EAST"
        ),
        "{report}"
    );

    // The same audit over GraphQL (the API holds the directory through its kernel), with
    // an inclusion proof checked here by the documented algorithm.
    let root = after(&report, "Merkle root ").to_owned();
    let trail = support::graphql(
        &http,
        &base,
        "query($w: String!) { auditTrail(workflowId: $w) { root verified operations zones problems leaves { eventId eventType leafHash } } }",
        serde_json::json!({"w": workflow_id}),
    )
    .await;
    let t = &trail["data"]["auditTrail"];
    assert_eq!(t["root"], root.as_str(), "{trail}");
    assert_eq!(t["verified"], true, "{trail}");
    assert_eq!(t["operations"], 2);
    assert_eq!(t["zones"], serde_json::json!(["US-EAST"]));
    let leaves = t["leaves"].as_array().unwrap();
    let completed = leaves
        .iter()
        .position(|l| l["eventType"] == "TaskCompleted")
        .unwrap();
    let event_id = leaves[completed]["eventId"].as_str().unwrap();
    let proof = support::graphql(
        &http,
        &base,
        "query($w: String!, $e: String!) { auditProof(workflowId: $w, eventId: $e) { index size leafHash proof root } }",
        serde_json::json!({"w": workflow_id, "e": event_id}),
    )
    .await;
    let p = &proof["data"]["auditProof"];
    let hash = |v: &serde_json::Value| -> [u8; 32] {
        triad_sovereignty::unhex(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let path: Vec<[u8; 32]> = p["proof"].as_array().unwrap().iter().map(hash).collect();
    assert_eq!(p["root"], root.as_str());
    assert!(triad_sovereignty::merkle::verify_inclusion(
        &hash(&p["leafHash"]),
        p["index"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
        &path,
        &hash(&p["root"]),
    ));

    // Crypto-shredding: the workflow's keys get tombstones; the API, following them, can
    // no longer open its outputs (nor can anyone who has only the log and node keys once
    // compaction has removed the records).
    let (shred, _) = ok(&env, &["keys", "shred", &api_workflow], &[]);
    assert!(shred.contains("1 workflow key(s) shredded"), "{shred}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shout = task(&get(api_workflow.clone()).await, "shout");
        if shout["output"].is_null() {
            assert_eq!(shout["sealed_to"], serde_json::json!(["US-EAST"]));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API still opens a shredded output: {shout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Other workflows are untouched; shredding twice says there is nothing left.
    assert_eq!(
        task(&get(workflow_id.clone()).await, "shout")["output"],
        format!("THE SECRET IS {secret}")
    );
    let again = run(&env, &["keys", "shred", &api_workflow], &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no workflow keys"));

    pg.query("SELECT triad_drop_schema($1)", &[&schema])
        .await
        .unwrap();
}
