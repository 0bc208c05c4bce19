//! The schema evolution gate. Every `.avsc` keeps its released versions in
//! `schemas/history/<name>/v<N>.avsc` and a golden corpus of encoded records per version in
//! `schemas/golden/<name>/v<N>/`. The suite fails when the current schema cannot read any
//! earlier version (BACKWARD_TRANSITIVE, the event topics' level), when an old golden record
//! no longer decodes, or when a schema changed without a new history entry.
//!
//! To release a schema change: copy the new `.avsc` to `schemas/history/<name>/v<N+1>.avsc`,
//! then `UPDATE_GOLDEN=1 cargo test -p triad-codec --test evolution` writes the new
//! version's golden records (older versions are never rewritten).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde_json::Value as Json;
use triad_codec::{AvroRecord, Catalog, decode_datum, encode_datum};
use triad_domain::{WorkflowEvent, fixtures};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// `(version, schema text)` of every released version, oldest first.
fn history(name: &str) -> Vec<(u32, String)> {
    let dir = schemas_dir().join("history").join(name);
    let mut out: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every schema needs a history)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let v = p.file_stem()?.to_str()?.strip_prefix('v')?.parse().ok()?;
            Some((v, std::fs::read_to_string(&p).unwrap()))
        })
        .collect();
    out.sort_by_key(|(v, _)| *v);
    let versions: Vec<u32> = out.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=out.len() as u32).collect::<Vec<_>>(),
        "{name}: history versions must be 1..N"
    );
    out
}

fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err("partially compatible".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn gate<T: AvroRecord + PartialEq + std::fmt::Debug>(samples: &[T]) {
    let catalog = Catalog::load().unwrap();
    let current = catalog.schema::<T>().unwrap();
    let history = history(T::NAME);
    let (latest_version, latest_text) = history.last().unwrap();
    let json = |s: &str| serde_json::from_str::<Json>(s).unwrap();
    assert_eq!(
        json(latest_text),
        json(T::AVSC),
        "{} changed: copy it to schemas/history/{}/v{}.avsc (after checking compatibility) and run \
         UPDATE_GOLDEN=1 cargo test -p triad-codec --test evolution",
        T::NAME,
        T::NAME,
        latest_version + 1
    );
    for (version, text) in &history {
        let old = Schema::parse_str(text).unwrap();
        can_read(&old, current)
            .unwrap_or_else(|e| panic!("{} cannot read its v{version}: {e}", T::NAME));
        let dir = schemas_dir()
            .join("golden")
            .join(T::NAME)
            .join(format!("v{version}"));
        if version == latest_version && std::env::var_os("UPDATE_GOLDEN").is_some() && !dir.exists()
        {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in samples.iter().enumerate() {
                std::fs::write(
                    dir.join(format!("{i:03}.avro")),
                    encode_datum(&old, s).unwrap(),
                )
                .unwrap();
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 once)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty golden corpus", dir.display());
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            let decoded: T = decode_datum(*version, &old, Some(current), &bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if version == latest_version {
                let index: usize = file.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                assert_eq!(&decoded, &samples[index], "{}", file.display());
            }
        }
    }
}

#[test]
fn inbox_schema_evolves_backward_transitively() {
    gate(&fixtures::inbox_records());
}

#[test]
fn event_schema_evolves_backward_transitively() {
    gate(&fixtures::workflow_events());
}

#[test]
fn dead_letter_schema_evolves_backward_transitively() {
    gate(&[fixtures::dead_letter()]);
}

#[test]
fn task_request_schema_evolves_backward_transitively() {
    gate(&[fixtures::task_request()]);
}

#[test]
fn control_schema_evolves_backward_transitively() {
    gate(&[fixtures::control_record()]);
}

#[test]
fn executor_status_schema_evolves_backward_transitively() {
    gate(&fixtures::executor_statuses());
}

#[test]
fn model_registration_schema_evolves_backward_transitively() {
    gate(&fixtures::model_registrations());
}

#[test]
fn api_key_schema_evolves_backward_transitively() {
    gate(&fixtures::api_key_events());
}

#[test]
fn model_heartbeat_schema_evolves_backward_transitively() {
    gate(&fixtures::model_heartbeats());
}

#[test]
fn key_directory_schema_evolves_backward_transitively() {
    gate(&fixtures::key_directory_changes());
}

#[test]
fn workflow_key_schema_evolves_backward_transitively() {
    gate(&fixtures::workflow_keys());
}

#[test]
fn violation_schema_evolves_backward_transitively() {
    gate(&fixtures::sovereignty_violations());
}

#[test]
fn policy_schema_evolves_backward_transitively() {
    gate(&fixtures::policy_versions());
}

#[test]
fn checkpoint_schema_evolves_backward_transitively() {
    gate(&fixtures::custody_checkpoints());
}

#[test]
fn credits_command_schema_evolves_backward_transitively() {
    gate(&fixtures::credits_commands());
}

#[test]
fn credits_event_schema_evolves_backward_transitively() {
    gate(&fixtures::credits_events());
}

#[test]
fn snapshot_schema_evolves_backward_transitively() {
    gate(&fixtures::workflow_snapshots());
}

#[test]
fn the_gate_rejects_a_deliberately_incompatible_change() {
    // A new required field in the event metadata: new code could not read old events.
    let mut json: Json = serde_json::from_str(WorkflowEvent::AVSC).unwrap();
    json["fields"][0]["type"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string"}));
    let changed = Schema::parse(&json).unwrap();
    let (_, v1) = &history(WorkflowEvent::NAME)[0];
    assert!(can_read(&Schema::parse_str(v1).unwrap(), &changed).is_err());
    // While adding it with a default is fine.
    json["fields"][0]["type"]["fields"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap()["default"] = serde_json::json!("");
    assert!(
        can_read(
            &Schema::parse_str(v1).unwrap(),
            &Schema::parse(&json).unwrap()
        )
        .is_ok()
    );
}
