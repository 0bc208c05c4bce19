//! Shared by the integration tests of the `triad` binary: an isolated installation (own
//! topic prefix and consumer groups) on the running stack, child processes of the real
//! binary, submitting workflows and collecting the event store.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use triad_codec::{Codec, CodecOptions};
use triad_config::KafkaConfig;
use triad_domain::{
    CommandMetadata, EventBody, InboxBody, InboxRecord, SubmitWorkflow, WorkflowEvent,
};
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;

pub struct Env {
    pub prefix: String,
    pub group: String,
    pub partitions: i32,
    pub kafka: KafkaConfig,
    pub names: Names,
    pub codec: Arc<Codec>,
    pub producer: Producer,
    pub config_file: Option<PathBuf>,
    pub extra_env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Env {
    /// A fresh installation: topics created under a unique prefix.
    pub async fn new(partitions: i32) -> Self {
        Self::on_broker(partitions, &KafkaConfig::default().bootstrap_servers).await
    }

    /// Like [`Env::new`] on the broker at `bootstrap` (the registry stays the stack's).
    pub async fn on_broker(partitions: i32, bootstrap: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("it-{id}.");
        let kafka = KafkaConfig {
            bootstrap_servers: bootstrap.to_owned(),
            topic_prefix: prefix.clone(),
            group_prefix: format!("it-{id}"),
            partitions,
            ..KafkaConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("triad-it-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let env = Self {
            prefix,
            group: kafka.group_prefix.clone(),
            partitions,
            names: Names::new(&kafka),
            codec: Arc::new(
                Codec::new(&CodecOptions {
                    registry_url: "http://127.0.0.1:8081".into(),
                    max_allocation_bytes: 16 << 20,
                })
                .unwrap(),
            ),
            producer: Producer::new(&kafka).unwrap(),
            kafka,
            config_file: None,
            extra_env: vec![],
            dir,
        };
        let status = env.triad(&["topics", "ensure"]).status().unwrap();
        assert!(status.success(), "topics ensure failed");
        env
    }

    pub fn with_config(mut self, toml: &str) -> Self {
        let path = self.dir.join("triad.toml");
        std::fs::write(&path, toml).unwrap();
        self.config_file = Some(path);
        self
    }

    pub fn triad(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_triad"));
        if let Some(f) = &self.config_file {
            c.arg("--config").arg(f);
        }
        c.args(args)
            .env("TRIAD_KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("TRIAD_KAFKA__GROUP_PREFIX", &self.group)
            .env("TRIAD_KAFKA__PARTITIONS", self.partitions.to_string())
            .env(
                "TRIAD_KAFKA__BOOTSTRAP_SERVERS",
                &self.kafka.bootstrap_servers,
            )
            .env("TRIAD_LOG__FILTER", "warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    /// A worker process whose stderr goes to a log file in the test's directory; killed
    /// when dropped, so a failing test leaves no worker running.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Guarded {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        Guarded(self.triad(args).stderr(log).spawn().unwrap())
    }

    /// Runs `triad replay --projection workflows --verify` and asserts that it succeeded and
    /// compared every read-model table (and the offsets) equal before swapping.
    pub fn replay_and_verify(&self) {
        let out = self
            .triad(&["replay", "--projection", "workflows", "--verify"])
            .stdout(Stdio::piped())
            .output()
            .expect("running triad replay");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "replay failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for table in [
            "workflows",
            "tasks",
            "workflow_events",
            "models",
            "projection_offsets",
        ] {
            assert!(stdout.contains(&format!("verified {table}: ")), "{stdout}");
        }
    }

    /// The test's own directory (logs, keys, documents); removed by nothing, under the
    /// system's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub async fn submit(&self, workflow_id: &str, workflow: SubmitWorkflow) {
        self.command(workflow_id, InboxBody::SubmitWorkflow(workflow))
            .await;
    }

    pub async fn cancel(&self, workflow_id: &str, reason: &str) {
        self.command(
            workflow_id,
            InboxBody::CancelWorkflow(triad_domain::CancelWorkflow {
                reason: Some(reason.to_owned()),
            }),
        )
        .await;
    }

    pub async fn command(&self, workflow_id: &str, body: InboxBody) {
        let record = InboxRecord {
            meta: CommandMetadata {
                command_id: uuid::Uuid::new_v4().to_string(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
                workflow_id: workflow_id.to_owned(),
                issued_at: triad_kafka::now_micros(),
                actor: Some("integration-test".into()),
                tenant: None,
                schema_version: triad_domain::INBOX_SCHEMA_VERSION,
            },
            body,
        };
        let delivered = self
            .producer
            .send_record(&self.codec, &self.names.inbox, None, workflow_id, &record)
            .await
            .unwrap();
        assert_eq!(
            delivered.partition,
            triad_kafka::produce::partition_for(workflow_id.as_bytes(), self.partitions),
            "the pinned partitioner and partition_for disagree"
        );
    }

    /// Reads `topic` from the beginning, decoding every record, until `done` holds for
    /// what was read (or `timeout`, which fails the test with `what`).
    pub async fn read_until<T: triad_codec::AvroRecord>(
        &self,
        topic: &str,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[T]) -> bool,
    ) -> Vec<T> {
        let consumer: StreamConsumer = triad_kafka::client::consumer_config(
            &self.kafka,
            &format!("{}-observer-{}", self.group, uuid::Uuid::new_v4()),
        )
        .create()
        .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut stream = consumer.stream();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) {
            let m = tokio::time::timeout_at(deadline, stream.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for {what} on {topic} after {} records",
                        out.len()
                    )
                })
                .unwrap()
                .unwrap();
            out.push(self.codec.decode::<T>(m.payload()).await.unwrap());
        }
        out
    }

    /// The event store until every one of `workflows` has a final event.
    /// Submits the research workflow (see [`research`]) under each id, its topic made unique
    /// by `label` and the id.
    pub async fn submit_research(&self, ids: &[String], label: &str, fan_in: bool) {
        for id in ids {
            self.submit(id, research(&format!("{label} {id}"), fan_in).to_command())
                .await;
        }
    }

    pub async fn events_until_finished(
        &self,
        workflows: &[String],
        timeout: Duration,
    ) -> Vec<WorkflowEvent> {
        self.read_until(
            &self.names.events,
            timeout,
            "every workflow to finish",
            |events: &[WorkflowEvent]| {
                let finished: std::collections::HashSet<&str> = events
                    .iter()
                    .filter(|e| e.body.is_terminal())
                    .map(|e| e.meta.workflow_id.as_str())
                    .collect();
                workflows.iter().all(|w| finished.contains(w.as_str()))
            },
        )
        .await
    }
}

/// Events grouped by workflow, in log order.
pub fn by_workflow(events: &[WorkflowEvent]) -> BTreeMap<String, Vec<WorkflowEvent>> {
    let mut out: BTreeMap<String, Vec<WorkflowEvent>> = BTreeMap::new();
    for e in events {
        out.entry(e.meta.workflow_id.clone())
            .or_default()
            .push(e.clone());
    }
    out
}

/// A port nothing listens on yet.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every workflow completed `tasks` tasks exactly once and then itself.
pub fn assert_each_completed(per_workflow: &BTreeMap<String, Vec<WorkflowEvent>>, tasks: usize) {
    for (wf, list) in per_workflow {
        let completed = list
            .iter()
            .filter(|e| matches!(e.body, EventBody::TaskCompleted(_)))
            .count();
        assert_eq!(completed, tasks, "{wf}: every task completes exactly once");
        assert!(
            list.iter()
                .any(|e| matches!(e.body, EventBody::WorkflowCompleted(_))),
            "{wf}"
        );
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, also when a test panics.
#[derive(Debug)]
pub struct Guarded(pub Child);

impl std::ops::Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The log invariants every failure test checks: any two events sharing a (workflow,
/// sequence) are byte-identical copies; per workflow the distinct sequences run 1..n with no
/// gap. Returns the distinct events per workflow, in sequence order.
pub fn distinct_gap_free(
    events: &[WorkflowEvent],
    context: &str,
) -> BTreeMap<String, Vec<WorkflowEvent>> {
    let mut unique: BTreeMap<(String, i64), &WorkflowEvent> = BTreeMap::new();
    for e in events {
        let key = (e.meta.workflow_id.clone(), e.meta.sequence);
        match unique.get(&key) {
            Some(seen) => assert_eq!(*seen, e, "two different events at {key:?} ({context})"),
            None => {
                unique.insert(key, e);
            }
        }
    }
    let mut per_workflow: BTreeMap<String, Vec<WorkflowEvent>> = BTreeMap::new();
    for e in unique.values() {
        per_workflow
            .entry(e.meta.workflow_id.clone())
            .or_default()
            .push((*e).clone());
    }
    for (wf, list) in &per_workflow {
        let seqs: Vec<i64> = list.iter().map(|e| e.meta.sequence).collect();
        assert_eq!(
            seqs,
            (1..=list.len() as i64).collect::<Vec<_>>(),
            "{wf} ({context})"
        );
    }
    per_workflow
}

/// The seed's research workflow in US-EAST with `extra` fan-out tasks: questions → answer
/// (→ measure → report when `fan_in`), topic made unique by `topic`.
pub fn research(topic: &str, fan_in: bool) -> triad_workflow::Workflow {
    use triad_workflow::{Task, Workflow};
    let wf = Workflow::new("research")
        .zones(["US-EAST"])
        .task(Task::new(
            "generate_questions",
            format!("Generate 3 questions about {topic}"),
        ))
        .task(
            Task::new("answer", "Answer: {generate_questions.output}")
                .depends_on(["generate_questions"]),
        );
    if !fan_in {
        return wf;
    }
    wf.task(
        Task::new("measure", "Count words: {generate_questions.output}")
            .depends_on(["generate_questions"]),
    )
    .task(
        Task::new("report", "Summarize: {answer.output} / {measure.output}")
            .depends_on(["answer", "measure"]),
    )
}

/// A PostgreSQL connection to the stack's database (the tests' own reads).
pub async fn pg() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=triad dbname=triad",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// Polls `query` (one bigint) until `done` holds for it; fails the test after `timeout`.
pub async fn wait_for(
    pg: &tokio_postgres::Client,
    query: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(i64) -> bool,
) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // The schema may not exist yet right after the worker started.
        let value = pg
            .query_one(query, &[])
            .await
            .ok()
            .and_then(|r| r.try_get::<_, i64>(0).ok());
        if let Some(v) = value.filter(|v| done(*v)) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what} (last value {value:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the processor, a US-EAST executor, the projection worker (in a schema of the
/// test's own) and `triad api` on a free port, with `extra` settings; returns the children,
/// the API's base URL, a client holding an operator's API key (tenant `ops`) and the read
/// models' schema, once the API is healthy.
pub async fn api_stack(
    env: &mut Env,
    extra: &[(&str, &str)],
) -> (Vec<Guarded>, String, reqwest::Client, String) {
    let schema = format!("it_{}", env.group.trim_start_matches("it-"));
    let port = free_port();
    env.extra_env.extend([
        ("TRIAD_PROJECTION__SCHEMA".to_owned(), schema.clone()),
        ("TRIAD_API__LISTEN".to_owned(), format!("127.0.0.1:{port}")),
    ]);
    env.extra_env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let children = vec![
        env.spawn("processor", &["process"]),
        env.spawn("executor", &["execute", "--zone", "US-EAST"]),
        env.spawn("projection", &["project"]),
        env.spawn("api", &["api"]),
    ];
    let base = format!("http://127.0.0.1:{port}");
    wait_api_healthy(&reqwest::Client::new(), &base, &env.log_path("api")).await;
    let http = client(&api_key(env, "ops", "operator"));
    (children, base, http, schema)
}

/// A new API key for `tenant` with `role`, made with `triad api-keys create`.
pub fn api_key(env: &Env, tenant: &str, role: &str) -> String {
    let (stdout, _) = cli_ok(
        env,
        &[
            "api-keys", "create", "--tenant", tenant, "--role", role, "--name", "it",
        ],
        &[],
    );
    let key = stdout.trim().to_owned();
    assert!(key.starts_with("triad_"), "{stdout}");
    key
}

/// An HTTP client that sends `key` as its bearer credential on every request.
pub fn client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// POSTs `body` as JSON to `url`; returns the status and the JSON answer.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = http.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// GETs `url`; returns the status and the JSON answer (Null when the body is not JSON).
pub async fn get_json(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// GETs `url` and reads the whole body as text (an SSE stream until it ends).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Waits until `triad api` at `base` answers `GET /v1/health` with 200 (the projection has
/// created its schema); fails the test with the API's log after a minute.
pub async fn wait_api_healthy(http: &reqwest::Client, base: &str, log: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("{base}/v1/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API never became healthy: {}",
            read_log(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `triad args` (with `extra` environment on top of the installation's), capturing
/// its output.
pub fn cli(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    env.triad(args)
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Like [`cli`], failing the test unless it succeeded; returns (stdout, stderr).
pub fn cli_ok(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> (String, String) {
    let out = cli(env, args, extra);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout} {stderr}");
    (stdout, stderr)
}

/// The rest of the first line of `text` containing `marker`, without spaces and quotes.
pub fn after<'a>(text: &'a str, marker: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.split_once(marker)
                .map(|(_, rest)| rest.trim().trim_matches('"'))
        })
        .unwrap_or_else(|| panic!("no {marker:?} in {text}"))
}

/// Sets `env` up for sealed payloads: an operator key (in the test's directory), the
/// sovereignty settings in the environment of every later command, and each node enrolled
/// in its zone with its wrapping key (in the file store, or in the TPM a TCTI names) and
/// its signing key, and the processor and the notary enrolled to sign only. Returns the operator
/// key's path.
pub fn sealing(env: &mut Env, nodes: &[(&str, &str, Option<&str>)]) -> PathBuf {
    let op = env.dir.join("operator.key");
    let (out, _) = cli_ok(
        env,
        &["keys", "operator-init", "--out", op.to_str().unwrap()],
        &[],
    );
    env.extra_env.extend([
        (
            "TRIAD_SOVEREIGNTY__OPERATOR_PUBLIC_KEY".to_owned(),
            after(&out, "operator_public_key = ").to_owned(),
        ),
        (
            "TRIAD_SOVEREIGNTY__KEY_DIR".to_owned(),
            env.dir.join("keys").display().to_string(),
        ),
        ("TRIAD_SOVEREIGNTY__SEAL".to_owned(), "true".to_owned()),
    ]);
    for (node, zone, tpm) in nodes {
        let mut args = vec!["keys", "node-key", "--node", node];
        if let Some(tcti) = tpm {
            args.extend(["--tpm", tcti]);
        }
        let (key, _) = cli_ok(env, &args, &[]);
        let args = enrol_args(
            node,
            zone,
            Some(after(&key, "public key ")),
            Some(after(&key, "signing key ")),
            op.to_str().unwrap(),
        );
        cli_ok(env, &args, &[]);
    }
    // The processor signs each terminal event's root and the notary its checkpoints; they
    // are enrolled to sign only, so that nothing is ever wrapped to them.
    for signer in ["processor", "notary"] {
        let (key, _) = cli_ok(env, &["keys", "node-key", "--node", signer], &[]);
        let args = enrol_args(
            signer,
            nodes.first().map_or("US-EAST", |n| n.1),
            None,
            Some(after(&key, "signing key ")),
            op.to_str().unwrap(),
        );
        cli_ok(env, &args, &[]);
    }
    op
}

/// The arguments of `triad keys enrol` for `node` in `zone`: its wrapping key (a recipient)
/// and/or its signing key, signed with the operator key at `op`.
pub fn enrol_args<'a>(
    node: &'a str,
    zone: &'a str,
    public_key: Option<&'a str>,
    signing_key: Option<&'a str>,
    op: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["keys", "enrol", "--node", node, "--zone", zone];
    if let Some(k) = public_key {
        args.extend(["--public-key", k]);
    }
    if let Some(k) = signing_key {
        args.extend(["--signing-key", k]);
    }
    args.extend(["--operator-key", op]);
    args
}

/// A configuration with one priced remote model, `paid`, served by the provider at `base` in
/// US-EAST (credits and tenancy tests), and a short ledger retry.
pub fn paid_model_config(base: &str) -> String {
    format!(
        "[models.paid]\nkind = \"openai\"\nbase_url = \"{base}\"\nzones = [\"US-EAST\"]\n\
         input_micros_per_1k = 10000\noutput_micros_per_1k = 20000\n\
         [processor]\nledger_retry_ms = 300\n"
    )
}

/// The `extensions.code` of a GraphQL answer's first error ("" when there is none).
pub fn graphql_code(answer: &serde_json::Value) -> &str {
    answer["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
}

/// POSTs a GraphQL `query` with `variables`; returns the whole answer (`data` and `errors`).
pub async fn graphql(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    variables: serde_json::Value,
) -> serde_json::Value {
    http.post(format!("{base}/graphql"))
        .json(&serde_json::json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
