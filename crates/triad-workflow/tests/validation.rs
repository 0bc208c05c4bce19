//! Given a workflow, when it is validated, then each kind of mistake is reported with the
//! field and task that are wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use triad_workflow::{Context, Limits, ModelOffer, Task, Workflow, depth, ready};

fn zones() -> Vec<String> {
    ["US-EAST", "US-WEST", "US-CENTRAL", "EU-WEST"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn groups() -> Vec<(String, Vec<String>)> {
    vec![(
        "CONUS".into(),
        vec!["US-EAST".into(), "US-WEST".into(), "US-CENTRAL".into()],
    )]
}

/// The problems `w` has against the test policy and `models`.
fn errors_against(w: &Workflow, models: &[ModelOffer]) -> Vec<String> {
    let (z, g) = (zones(), groups());
    let ctx = Context {
        zones: &z,
        groups: &g,
        models: Some(models),
        limits: Limits::default(),
    };
    match w.validate(&ctx) {
        Ok(()) => vec![],
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn offer(id: &str, zones: &[&str], specialties: &[&str]) -> ModelOffer {
    ModelOffer::new(
        id,
        zones.iter().map(|z| (*z).to_owned()).collect(),
        specialties.iter().map(|s| (*s).to_owned()).collect(),
    )
}

/// Against the embedded model, which runs inside the executor (so in any zone).
fn errors(w: &Workflow) -> Vec<String> {
    errors_against(
        w,
        &[offer("triad-local", &[], &["research", "writing", "math"])],
    )
}

fn research() -> Workflow {
    Workflow::new("research")
        .zones(["CONUS"])
        .task(Task::new(
            "generate_questions",
            "Generate 3 questions about sovereignty",
        ))
        .task(
            Task::new("answer", "Answer: {generate_questions.output}")
                .depends_on(["generate_questions"]),
        )
}

fn has(errs: &[String], needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

#[test]
fn the_seed_example_is_valid() {
    assert_eq!(errors(&research()), Vec::<String>::new());
}

#[test]
fn duplicate_ids_name_both_places() {
    let w = research().task(Task::new("answer", "again"));
    let errs = errors(&w);
    assert!(
        has(
            &errs,
            "tasks[2].id: duplicate task id \"answer\" (also tasks[1])"
        ),
        "{errs:?}"
    );
}

#[test]
fn unknown_dependency_and_self_dependency() {
    let w = research().task(Task::new("x", "p").depends_on(["nope", "x"]));
    let errs = errors(&w);
    assert!(
        has(&errs, "tasks[2].depends_on[0]: unknown task \"nope\""),
        "{errs:?}"
    );
    assert!(
        has(
            &errs,
            "tasks[2].depends_on[1]: task \"x\" depends on itself"
        ),
        "{errs:?}"
    );
}

#[test]
fn cycles_are_named() {
    let w = Workflow::new("loop")
        .zones(["US-EAST"])
        .task(Task::new("a", "p").depends_on(["c"]))
        .task(Task::new("b", "p").depends_on(["a"]))
        .task(Task::new("c", "p").depends_on(["b"]));
    let errs = errors(&w);
    assert!(
        has(&errs, "tasks: dependency cycle: a -> c -> b -> a"),
        "{errs:?}"
    );
    assert_eq!(depth(&w), None);
}

#[test]
fn template_must_reference_a_dependency() {
    let w = research().task(Task::new("summary", "Summarise {answer.output}"));
    let errs = errors(&w);
    assert!(
        has(
            &errs,
            "tasks[2].prompt: references {answer.output} but \"answer\" is not in depends_on"
        ),
        "{errs:?}"
    );
}

#[test]
fn empty_prompt_unknown_zone_unknown_model_and_bad_numbers() {
    let w = Workflow::new("w").zones(["MARS"]).task(
        Task::new("a", "  ")
            .model("gpt-9")
            .max_tokens(0)
            .timeout_ms(0)
            .max_attempts(99),
    );
    let errs = errors(&w);
    for needle in [
        "zones[0]: unknown zone or group \"MARS\"",
        "tasks[0].prompt: task \"a\" has an empty prompt",
        "tasks[0].model: unknown model \"gpt-9\"",
        "tasks[0].max_tokens",
        "tasks[0].timeout_ms",
        "tasks[0].retry.max_attempts",
    ] {
        assert!(has(&errs, needle), "{needle}: {errs:?}");
    }
}

#[test]
fn a_task_without_zones_needs_workflow_zones() {
    let w = Workflow::new("w").task(Task::new("a", "p"));
    assert!(has(
        &errors(&w),
        "tasks[0].zones: task \"a\" has no zones and the workflow sets none"
    ));
}

#[test]
fn templating_may_not_move_data_out_of_its_zones() {
    // `answer` may run anywhere in CONUS but reads an output that may only be opened in US-EAST.
    let w = Workflow::new("w")
        .zones(["CONUS"])
        .task(Task::new("secret", "p").zones(["US-EAST"]))
        .task(Task::new("answer", "Use {secret.output}").depends_on(["secret"]));
    let errs = errors(&w);
    assert!(
        has(
            &errs,
            "tasks[1].zones: task \"answer\" may run in [\"US-CENTRAL\", \"US-WEST\"]"
        ),
        "{errs:?}"
    );
    // Narrowing the reader to the output's zone is fine.
    let ok = Workflow::new("w")
        .zones(["CONUS"])
        .task(Task::new("secret", "p").zones(["US-EAST"]))
        .task(
            Task::new("answer", "Use {secret.output}")
                .depends_on(["secret"])
                .zones(["US-EAST"]),
        );
    assert_eq!(errors(&ok), Vec::<String>::new());
}

#[test]
fn limits_are_enforced() {
    let mut w = Workflow::new("chain")
        .zones(["US-EAST"])
        .task(Task::new("t0", "p"));
    for i in 1..40 {
        w = w.task(Task::new(format!("t{i}"), "p").depends_on([format!("t{}", i - 1)]));
    }
    assert_eq!(depth(&w), Some(40));
    assert!(has(
        &errors(&w),
        "tasks: dependency chain of 40 tasks; the limit is 32"
    ));
    let mut wide = Workflow::new("wide").zones(["US-EAST"]);
    for i in 0..101 {
        wide = wide.task(Task::new(format!("t{i}"), "p"));
    }
    assert!(has(&errors(&wide), "tasks: 101 tasks; the limit is 100"));
    let big = Workflow::new("big")
        .zones(["US-EAST"])
        .task(Task::new("a", "x".repeat(70_000)));
    assert!(has(
        &errors(&big),
        "tasks[0].prompt: 70000 bytes; the limit is 65536"
    ));
}

#[test]
fn json_document_is_the_same_workflow() {
    let doc = r#"{
        "name": "research",
        "zones": ["CONUS"],
        "tasks": [
            {"id": "generate_questions", "prompt": "Generate 3 questions about sovereignty"},
            {"id": "answer", "prompt": "Answer: {generate_questions.output}", "depends_on": ["generate_questions"]}
        ]
    }"#;
    assert_eq!(Workflow::from_json(doc).unwrap(), research());
    let err =
        Workflow::from_json(r#"{"name":"x","tasks":[{"id":"a","prompt":"p","dependson":[]}]}"#)
            .unwrap_err();
    assert!(err.to_string().contains("dependson"), "{err}");
}

#[test]
fn fan_out_then_fan_in() {
    let w = Workflow::new("fan")
        .zones(["US-EAST"])
        .task(Task::new("root", "p"))
        .task(Task::new("left", "p").depends_on(["root"]))
        .task(Task::new("right", "p").depends_on(["root"]))
        .task(Task::new("join", "{left.output} {right.output}").depends_on(["left", "right"]));
    assert_eq!(errors(&w), Vec::<String>::new());
    let none = BTreeSet::new();
    assert_eq!(ready(&w, &none, &none), vec!["root"]);
    let done = BTreeSet::from(["root"]);
    assert_eq!(ready(&w, &done, &none), vec!["left", "right"]);
    let done = BTreeSet::from(["root", "left"]);
    assert_eq!(
        ready(&w, &done, &BTreeSet::from(["right"])),
        Vec::<&str>::new(),
        "join waits for both"
    );
    let done = BTreeSet::from(["root", "left", "right"]);
    assert_eq!(ready(&w, &done, &none), vec!["join"]);
}

#[test]
fn to_command_carries_every_field() {
    let w = research().label("team", "demo");
    let cmd = w.to_command();
    assert_eq!(
        cmd.tasks[1].depends_on,
        vec!["generate_questions".to_owned()]
    );
    assert_eq!(
        cmd.tasks[1].prompt,
        b"Answer: {generate_questions.output}".to_vec()
    );
    assert_eq!(cmd.default_zones, vec!["CONUS".to_owned()]);
    assert_eq!(cmd.tasks[0].max_attempts, 3);
    assert_eq!(cmd.labels.get("team").map(String::as_str), Some("demo"));
}

#[test]
fn yaml_and_json_documents_are_the_same_workflow() {
    let json = r#"{"name": "research", "zones": ["CONUS"], "tasks": [
        {"id": "generate_questions", "prompt": "Generate 3 questions"},
        {"id": "answer", "prompt": "Answer: {generate_questions.output}", "depends_on": ["generate_questions"],
         "retry": {"max_attempts": 2}}]}"#;
    let yaml = "name: research\nzones: [CONUS]\ntasks:\n  - id: generate_questions\n    prompt: Generate 3 questions\n  - id: answer\n    prompt: \"Answer: {generate_questions.output}\"\n    depends_on: [generate_questions]\n    retry: {max_attempts: 2}\n";
    assert_eq!(
        Workflow::from_yaml(yaml).unwrap(),
        Workflow::from_json(json).unwrap()
    );
    let e = Workflow::from_yaml("name: x\ntasks:\n  - id: a\n    prompt: p\n    colour: red\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn the_shipped_examples_are_valid() {
    for file in ["research.json", "two-plus-two.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(file);
        let wf = Workflow::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let zones: Vec<String> = ["US-EAST", "US-WEST", "US-CENTRAL", "EU-WEST"]
            .map(String::from)
            .to_vec();
        let groups = vec![("CONUS".to_owned(), zones[..3].to_vec())];
        let ctx = Context {
            zones: &zones,
            groups: &groups,
            models: None,
            limits: Limits::default(),
        };
        wf.validate(&ctx).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// Validation against a market of remote models only: one in EU-WEST, one spanning US-EAST
/// and EU-WEST, one in US-EAST with the `law` specialty.
fn errors_with_remote_models(w: &Workflow) -> Vec<String> {
    errors_against(
        w,
        &[
            offer("eu-only", &["EU-WEST"], &["writing"]),
            offer("transatlantic", &["US-EAST", "EU-WEST"], &["writing"]),
            offer("us-lawyer", &["US-EAST"], &["law"]),
        ],
    )
}

#[test]
fn a_workflow_that_cannot_be_served_inside_its_zones_is_rejected_naming_task_and_reason() {
    // CONUS writing: the only writers process data in EU-WEST.
    let wf = Workflow::new("w")
        .zones(["CONUS"])
        .task(Task::new("draft", "Write").specialties(["writing"]));
    let e = errors_with_remote_models(&wf);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("tasks[0].zones: task \"draft\" cannot be served inside"),
        "{e:?}"
    );
    assert!(
        e[0].contains("eu-only processes data in EU-WEST")
            && e[0].contains("transatlantic processes data in EU-WEST")
            && e[0].contains("us-lawyer lacks specialty writing"),
        "{e:?}"
    );
    // A hint names the one model considered.
    let wf = Workflow::new("w")
        .zones(["US-EAST"])
        .task(Task::new("brief", "Draft").model("eu-only"));
    let e = errors_with_remote_models(&wf);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("eu-only processes data in EU-WEST"), "{e:?}");
    assert!(!e[0].contains("us-lawyer"), "{e:?}");
    // Served: EU writing, US law, and a task allowed in both zones of the spanning model.
    let ok = Workflow::new("w")
        .zones(["EU-WEST"])
        .task(Task::new("eu", "Write").specialties(["writing"]))
        .task(
            Task::new("law", "Draft")
                .zones(["US-EAST"])
                .specialties(["law"]),
        )
        .task(
            Task::new("both", "Write")
                .zones(["US-EAST", "EU-WEST"])
                .specialties(["writing"]),
        );
    assert_eq!(errors_with_remote_models(&ok), Vec::<String>::new());
    // A model that runs inside the executor serves any zone.
    let wf = Workflow::new("w")
        .zones(["CONUS"])
        .task(Task::new("sum", "What is 2+2?"));
    assert_eq!(errors(&wf), Vec::<String>::new());
}
