//! The claim check on the stack: a model answers with 1.2 MiB — more than a Kafka record may
//! hold — so the executor stores the output in the PostgreSQL blob store and reports a
//! reference; a downstream task in the zone fetches it by reference and works on the full
//! text; the leaf outputs of `WorkflowCompleted` are references too. The workflow completes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{Env, by_workflow, kill};
use triad_config::PostgresConfig;
use triad_domain::EventBody;
use triad_store::{BlobStore, PgBlobStore, sha256_hex};
use triad_testkit::{Behaviour, FakeProvider, Flavor};
use triad_workflow::{Task, Workflow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_above_the_inline_limit_travel_by_reference_and_are_used_downstream() {
    let words = 120_000;
    let big: String = (0..words).map(|n| format!("word{n:05} ")).collect();
    assert!(big.len() > 1_200_000);
    let provider = FakeProvider::start(Flavor::OpenAi).await;
    provider.set_default(Behaviour::Answer(Some(big.clone())));
    let config = format!(
        r#"
[models.triad-local]
kind = "local"
max_context = 100000000

[models.verbose]
kind = "openai"
base_url = "{}"
zones = ["US-EAST"]
"#,
        provider.base_url()
    );
    let env = Env::new(1).await.with_config(&config);
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let workflow = Workflow::new("large")
        .zones(["US-EAST"])
        .task(Task::new("draft", "Write at length").model("verbose"))
        .task(
            Task::new("count", "Count words: {draft.output}")
                .model("triad-local")
                .depends_on(["draft"]),
        )
        .task(
            Task::new("shout", "Uppercase: {draft.output}")
                .model("triad-local")
                .max_tokens(1_000_000)
                .depends_on(["draft"]),
        );
    env.submit("wf-large", workflow.to_command()).await;
    let events = env
        .events_until_finished(&["wf-large".to_owned()], Duration::from_secs(120))
        .await;
    kill(&mut processor);
    kill(&mut executor);
    let events = &by_workflow(&events)["wf-large"];

    let draft = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::TaskCompleted(c) if c.task_id == "draft" => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("draft did not complete: {events:#?}"));
    assert!(draft.output.is_empty(), "the output must not travel inline");
    let reference = draft.output_ref.expect("a reference to the output");
    assert_eq!(reference.sha256, sha256_hex(big.as_bytes()));
    assert_eq!(reference.size, i64::try_from(big.len()).unwrap());

    let done = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::WorkflowCompleted(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the workflow did not complete: {events:#?}"));
    // The downstream task read the whole text through the reference.
    assert_eq!(
        done.outputs
            .get("count")
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        Some(words.to_string())
    );
    let shout = done.output_refs.get("shout").unwrap_or_else(|| {
        panic!(
            "shout is not a reference: outputs {:?}",
            done.outputs
                .iter()
                .map(|(k, v)| (k, v.len()))
                .collect::<Vec<_>>()
        )
    });
    let store = PgBlobStore::new(&PostgresConfig::default().url, None, 1).unwrap();
    let content = store.get(shout).await.unwrap();
    // (The model trims its input, as the embedded model does.)
    let expected = big.trim_end().to_uppercase();
    assert!(
        content == expected.as_bytes(),
        "the stored output differs: {} bytes, expected {}",
        content.len(),
        expected.len()
    );
}
