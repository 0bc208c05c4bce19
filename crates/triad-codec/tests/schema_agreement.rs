#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Rust types agree with the `.avsc` files: every record round-trips through its schema
//! byte-exactly, and every field default of the schema fills the Rust type when old data
//! lacks the field. (Parsing Canonical Form drops `default` and `logicalType`, so comparing
//! canonical forms would prove neither.)

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use proptest::prelude::*;
use serde_json::Value as Json;
use triad_codec::resolve::resolve;
use triad_codec::{AvroRecord, Catalog, SCHEMA_FILES, decode_datum, encode_datum};
use triad_domain::fixtures;
use triad_domain::{
    CancelWorkflow, CommandMetadata, DeadLetter, InboxBody, InboxRecord, SubmitWorkflow, TaskSpec,
};

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(record: &T) {
    let catalog = Catalog::load().unwrap();
    let schema = catalog.schema::<T>().unwrap();
    let bytes = encode_datum(schema, record).unwrap();
    let back: T = decode_datum(1, schema, None, &bytes).unwrap();
    assert_eq!(&back, record);
    // Encoding is a function of the value: re-encoding gives the same bytes.
    assert_eq!(encode_datum(schema, &back).unwrap(), bytes);
}

#[test]
fn every_fixture_round_trips() {
    for r in fixtures::inbox_records() {
        round_trip(&r);
    }
    for e in fixtures::workflow_events() {
        round_trip(&e);
    }
    round_trip(&fixtures::dead_letter());
    round_trip(&fixtures::task_request());
    round_trip(&fixtures::control_record());
    for s in fixtures::workflow_snapshots() {
        round_trip(&s);
    }
    for s in fixtures::executor_statuses() {
        round_trip(&s);
    }
    for r in fixtures::model_registrations() {
        round_trip(&r);
    }
    for h in fixtures::model_heartbeats() {
        round_trip(&h);
    }
    for k in fixtures::api_key_events() {
        round_trip(&k);
    }
    for c in fixtures::key_directory_changes() {
        round_trip(&c);
    }
    for k in fixtures::workflow_keys() {
        round_trip(&k);
    }
    for v in fixtures::sovereignty_violations() {
        round_trip(&v);
    }
    for c in fixtures::custody_checkpoints() {
        round_trip(&c);
    }
    for p in fixtures::policy_versions() {
        round_trip(&p);
    }
    for c in fixtures::credits_commands() {
        round_trip(&c);
    }
    for e in fixtures::credits_events() {
        round_trip(&e);
    }
}

#[test]
fn fixtures_cover_every_union_branch() {
    let catalog = Catalog::load().unwrap();
    let branches = |schema: &Schema| match schema {
        Schema::Record(r) => match &r.fields[1].schema {
            Schema::Union(u) => u.variants().len(),
            other => panic!("body is not a union: {other:?}"),
        },
        other => panic!("not a record: {other:?}"),
    };
    assert_eq!(
        branches(catalog.schema::<InboxRecord>().unwrap()),
        fixtures::inbox_records().len()
    );
    assert_eq!(
        branches(catalog.schema::<triad_domain::WorkflowEvent>().unwrap()),
        fixtures::workflow_events().len()
    );
    // The ledger's unions are the fifth field of each record.
    let union_at = |schema: &Schema, i: usize| match schema {
        Schema::Record(r) => match &r.fields[i].schema {
            Schema::Union(u) => u.variants().len(),
            other => panic!("not a union: {other:?}"),
        },
        other => panic!("not a record: {other:?}"),
    };
    let commands = fixtures::credits_commands();
    assert_eq!(
        union_at(catalog.schema::<triad_domain::CreditsCommand>().unwrap(), 4),
        commands.len()
    );
    let events = fixtures::credits_events();
    assert_eq!(
        union_at(catalog.schema::<triad_domain::CreditsEvent>().unwrap(), 5),
        events.len()
    );
}

#[test]
fn timestamps_are_timestamp_micros_on_the_wire() {
    let catalog = Catalog::load().unwrap();
    let schema = catalog.schema::<DeadLetter>().unwrap();
    let Schema::Record(r) = schema else {
        panic!("not a record")
    };
    let failed_at = r.fields.iter().find(|f| f.name == "failed_at").unwrap();
    assert_eq!(failed_at.schema, Schema::TimestampMicros);
}

/// Removes `field` from the record named `record` anywhere in the schema JSON, returning
/// whether it was found.
fn strip_field(json: &mut Json, record: &str, field: &str) -> bool {
    match json {
        Json::Object(map) => {
            let is_target = map.get("name").and_then(Json::as_str) == Some(record)
                && map.get("type").and_then(Json::as_str) == Some("record");
            let mut found = false;
            if is_target && let Some(Json::Array(fields)) = map.get_mut("fields") {
                let before = fields.len();
                fields.retain(|f| f.get("name").and_then(Json::as_str) != Some(field));
                found = fields.len() != before;
            }
            map.values_mut()
                .map(|v| strip_field(v, record, field))
                .fold(found, |a, b| a | b)
        }
        Json::Array(items) => items
            .iter_mut()
            .map(|v| strip_field(v, record, field))
            .fold(false, |a, b| a | b),
        _ => false,
    }
}

/// Every (record, field, default) of a schema JSON.
fn defaulted_fields(json: &Json, out: &mut Vec<(String, String, Json)>) {
    match json {
        Json::Object(map) => {
            if map.get("type").and_then(Json::as_str) == Some("record") {
                let name = map
                    .get("name")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned();
                for f in map
                    .get("fields")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(field), Some(default)) =
                        (f.get("name").and_then(Json::as_str), f.get("default"))
                    {
                        out.push((name.clone(), field.to_owned(), default.clone()));
                    }
                }
            }
            map.values().for_each(|v| defaulted_fields(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| defaulted_fields(v, out)),
        _ => {}
    }
}

/// For each defaulted field: write the fixtures with a schema that lacks it, read them with
/// the real schema into the Rust type, and check the Rust value carries the default.
fn defaults_fill<T: AvroRecord + std::fmt::Debug>(samples: &[T]) -> usize {
    let json: Json = serde_json::from_str(T::AVSC).unwrap();
    let reader = Schema::parse(&json).unwrap();
    let mut fields = Vec::new();
    defaulted_fields(&json, &mut fields);
    assert!(!fields.is_empty());
    let mut checked = 0;
    for (record, field, default) in &fields {
        let mut old = json.clone();
        assert!(strip_field(&mut old, record, field));
        // A field that defines a named type used by a later field (TaskCompleted.output_ref
        // defines BlobRef) cannot be removed alone; its later users are checked instead.
        let writer = match Schema::parse(&old) {
            Ok(w) => w,
            Err(e) if e.to_string().contains("Unknown primitive type") => continue,
            Err(e) => panic!("{record}.{field}: {e}"),
        };
        for sample in samples {
            // The sample as written by the full schema, resolved to the old schema (this drops
            // the field), then written with the old schema: what an old producer would write.
            let full = encode_datum(&reader, sample).unwrap();
            let value = read(&reader, &full);
            let old_value = resolve(value, &reader, &writer).unwrap();
            let old_bytes = write(&writer, old_value);
            let back: T = decode_datum(1, &writer, Some(&reader), &old_bytes)
                .unwrap_or_else(|e| panic!("{record}.{field}: {e}"));
            // Re-encode and look at the field's value: it must be the schema default.
            let value = read(&reader, &encode_datum(&reader, &back).unwrap());
            let mut seen = Vec::new();
            collect_field(&value, &reader, record, field, &mut seen);
            for v in &seen {
                assert!(
                    value_matches_default(v, default),
                    "{record}.{field}: decoded {v:?}, schema default {default}"
                );
                checked += 1;
            }
        }
    }
    checked
}

fn read(schema: &Schema, bytes: &[u8]) -> Value {
    GenericDatumReader::builder(schema)
        .build()
        .unwrap()
        .read_value(&mut &bytes[..])
        .unwrap()
}

fn write(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

/// The values of `record.field` anywhere in `value`, walking the schema alongside it.
fn collect_field(value: &Value, schema: &Schema, record: &str, field: &str, out: &mut Vec<Value>) {
    match (value, schema) {
        (Value::Record(fields), Schema::Record(r)) => {
            for ((name, v), f) in fields.iter().zip(&r.fields) {
                if r.name.name() == record && name == field {
                    out.push(v.clone());
                }
                collect_field(v, &f.schema, record, field, out);
            }
        }
        (Value::Union(i, v), Schema::Union(u)) => {
            collect_field(v, &u.variants()[*i as usize], record, field, out)
        }
        (Value::Array(items), Schema::Array(a)) => items
            .iter()
            .for_each(|v| collect_field(v, &a.items, record, field, out)),
        (Value::Map(items), Schema::Map(m)) => items
            .values()
            .for_each(|v| collect_field(v, &m.types, record, field, out)),
        _ => {}
    }
}

fn value_matches_default(value: &Value, default: &Json) -> bool {
    match (value, default) {
        (Value::Union(_, inner), d) => value_matches_default(inner, d),
        (Value::Null, Json::Null) => true,
        (Value::Int(i), Json::Number(n)) => n.as_i64() == Some(i64::from(*i)),
        (Value::Long(i), Json::Number(n)) => n.as_i64() == Some(*i),
        (Value::Double(x), Json::Number(n)) => n.as_f64() == Some(*x),
        (Value::Boolean(b), Json::Bool(d)) => b == d,
        (Value::String(s), Json::String(d)) => s == d,
        (Value::Array(a), Json::Array(d)) => a.is_empty() && d.is_empty(),
        (Value::Map(m), Json::Object(d)) => m.is_empty() && d.is_empty(),
        _ => false,
    }
}

#[test]
fn defaults_fill_rust_types() {
    // A field only counts when some sample contains its record, so each schema must check
    // at least one value per defaulted field it has.
    assert!(defaults_fill(&fixtures::inbox_records()) >= 10);
    assert!(defaults_fill(&fixtures::workflow_events()) >= 10);
    assert!(defaults_fill(&[fixtures::dead_letter()]) >= 4);
    assert!(defaults_fill(&[fixtures::task_request()]) >= 5);
    assert!(defaults_fill(&[fixtures::control_record()]) >= 2);
    assert!(defaults_fill(&fixtures::executor_statuses()) >= 3);
    assert!(defaults_fill(&fixtures::model_registrations()) >= 4);
    assert!(defaults_fill(&fixtures::model_heartbeats()) >= 1);
    assert!(defaults_fill(&fixtures::api_key_events()) >= 3);
    assert!(defaults_fill(&fixtures::key_directory_changes()) >= 1);
    assert!(defaults_fill(&fixtures::workflow_keys()) >= 1);
    assert!(defaults_fill(&fixtures::sovereignty_violations()) >= 2);
    assert!(defaults_fill(&fixtures::custody_checkpoints()) >= 1);
    assert!(defaults_fill(&fixtures::policy_versions()) >= 1);
    assert!(defaults_fill(&fixtures::credits_commands()) >= 3);
    assert!(defaults_fill(&fixtures::credits_events()) >= 5);
}

#[test]
fn every_schema_file_parses_and_is_named_after_its_record() {
    for (name, avsc) in SCHEMA_FILES {
        let schema = Schema::parse_str(avsc).unwrap();
        let Schema::Record(r) = schema else {
            panic!("{name} is not a record")
        };
        assert_eq!(r.name.fullname(None), *name);
    }
}

#[test]
fn shared_named_types_are_identical_across_files() {
    // TaskSpec appears inline in both the inbox and the event schema; they must not drift.
    fn find<'a>(json: &'a Json, name: &str) -> Option<&'a Json> {
        match json {
            Json::Object(map)
                if map.get("name").and_then(Json::as_str) == Some(name)
                    && map.get("type").and_then(Json::as_str) == Some("record") =>
            {
                Some(json)
            }
            Json::Object(map) => map.values().find_map(|v| find(v, name)),
            Json::Array(items) => items.iter().find_map(|v| find(v, name)),
            _ => None,
        }
    }
    let inbox: Json = serde_json::from_str(InboxRecord::AVSC).unwrap();
    let events: Json = serde_json::from_str(triad_domain::WorkflowEvent::AVSC).unwrap();
    for shared in ["TaskSpec", "RoutingDecision", "ModelCall"] {
        let a = find(&inbox, shared).unwrap();
        let b = find(&events, shared).unwrap();
        assert_eq!(
            a, b,
            "{shared} differs between the inbox and the event schema"
        );
    }
    let commands: Json = serde_json::from_str(triad_domain::CreditsCommand::AVSC).unwrap();
    let ledger: Json = serde_json::from_str(triad_domain::CreditsEvent::AVSC).unwrap();
    let kind = |json: &Json| -> Json {
        fn enum_named(json: &Json) -> Option<Json> {
            match json {
                Json::Object(map)
                    if map.get("name").and_then(Json::as_str) == Some("CreditKind") =>
                {
                    Some(json.clone())
                }
                Json::Object(map) => map.values().find_map(enum_named),
                Json::Array(items) => items.iter().find_map(enum_named),
                _ => None,
            }
        }
        enum_named(json).unwrap()
    };
    assert_eq!(kind(&commands), kind(&ledger), "CreditKind differs");
}

fn arb_string() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn arb_task() -> impl Strategy<Value = TaskSpec> {
    (
        arb_string(),
        proptest::collection::vec(any::<u8>(), 0..32),
        proptest::option::of(arb_string()),
        proptest::collection::vec(arb_string(), 0..3),
        (any::<i32>(), any::<i64>(), any::<i32>(), any::<bool>()),
    )
        .prop_map(
            |(id, prompt, model_hint, zones, (max_tokens, timeout_ms, max_attempts, auction))| {
                TaskSpec {
                    id,
                    prompt,
                    model_hint,
                    specialties: zones.clone(),
                    zones,
                    depends_on: vec![],
                    max_tokens,
                    timeout_ms,
                    max_attempts,
                    auction,
                }
            },
        )
}

fn arb_inbox() -> impl Strategy<Value = InboxRecord> {
    let meta = (
        arb_string(),
        arb_string(),
        any::<i64>(),
        proptest::option::of(arb_string()),
    )
        .prop_map(
            |(command_id, workflow_id, issued_at, actor)| CommandMetadata {
                command_id,
                idempotency_key: "k".to_owned(),
                workflow_id,
                issued_at,
                tenant: actor.as_ref().map(|a| format!("t-{a}")),
                actor,
                schema_version: 1,
            },
        );
    let body = prop_oneof![
        (
            arb_string(),
            proptest::collection::vec(arb_task(), 0..4),
            proptest::collection::btree_map(arb_string(), arb_string(), 0..3),
            proptest::option::of(arb_string())
        )
            .prop_map(|(name, tasks, labels, account)| InboxBody::SubmitWorkflow(
                SubmitWorkflow {
                    name,
                    default_zones: vec!["US-EAST".to_owned()],
                    tasks,
                    labels,
                    account,
                }
            )),
        proptest::option::of(arb_string())
            .prop_map(|reason| InboxBody::CancelWorkflow(CancelWorkflow { reason })),
    ];
    (meta, body).prop_map(|(meta, body)| InboxRecord { meta, body })
}

proptest! {
    #[test]
    fn arbitrary_inbox_records_round_trip(record in arb_inbox()) {
        round_trip(&record);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let catalog = Catalog::load().unwrap();
        let schema = catalog.schema::<InboxRecord>().unwrap();
        let _ = decode_datum::<InboxRecord>(1, schema, None, &body);
    }
}

#[test]
fn resolution_matches_union_branches_by_name_not_position() {
    // The reader lists the inbox union's branches in reverse order: a writer's branch i must
    // still come back as the record of the same name.
    let catalog = Catalog::load().unwrap();
    let writer = catalog.schema::<InboxRecord>().unwrap();
    let mut json: Json = serde_json::from_str(InboxRecord::AVSC).unwrap();
    json["fields"][1]["type"].as_array_mut().unwrap().reverse();
    let reversed = Schema::parse(&json).unwrap();
    for record in fixtures::inbox_records() {
        let bytes = encode_datum(writer, &record).unwrap();
        let value = read(writer, &bytes);
        let resolved = resolve(value, writer, &reversed).unwrap();
        let Value::Record(fields) = &resolved else {
            panic!("not a record")
        };
        let Value::Union(index, _) = &fields[1].1 else {
            panic!("body is not a union")
        };
        let expected = match record.body {
            InboxBody::SubmitWorkflow(_) => 4,
            InboxBody::CancelWorkflow(_) => 3,
            InboxBody::TaskResultReported(_) => 2,
            InboxBody::TaskTimerFired(_) => 1,
            InboxBody::LedgerReply(_) => 0,
        };
        assert_eq!(*index, expected, "{}", record.body.type_name());
        // And through the typed path with the real reader, the record is unchanged.
        let back: InboxRecord = decode_datum(1, writer, Some(writer), &bytes).unwrap();
        assert_eq!(back, record);
    }
}

#[test]
fn incompatible_data_is_a_resolution_error_naming_the_path() {
    let catalog = Catalog::load().unwrap();
    let reader = catalog.schema::<DeadLetter>().unwrap();
    // An old writer whose error_kind was an int cannot be read as a string.
    let mut json: Json = serde_json::from_str(DeadLetter::AVSC).unwrap();
    for f in json["fields"].as_array_mut().unwrap() {
        if f["name"] == "error_kind" {
            f["type"] = Json::from("int");
        }
    }
    let writer = Schema::parse(&json).unwrap();
    let full = encode_datum(reader, &fixtures::dead_letter()).unwrap();
    let mut value = read(reader, &full);
    if let Value::Record(fields) = &mut value {
        for (name, v) in fields.iter_mut() {
            if name == "error_kind" {
                *v = Value::Int(7);
            }
        }
    }
    let bytes = write(&writer, value);
    let err = decode_datum::<DeadLetter>(9, &writer, Some(reader), &bytes).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("$.error_kind"), "{msg}");
    assert!(err.is_undecodable());
}

fn arb_event() -> impl Strategy<Value = triad_domain::WorkflowEvent> {
    let bodies = fixtures::workflow_events();
    (
        0..bodies.len(),
        arb_string(),
        any::<i64>(),
        any::<i64>(),
        proptest::option::of(arb_string()),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            move |(i, workflow_id, occurred_at, sequence, command_id, bytes)| {
                let mut event = bodies[i].clone();
                event.meta.workflow_id = workflow_id;
                event.meta.occurred_at = occurred_at;
                event.meta.sequence = sequence;
                event.meta.causation.command_id = command_id;
                match &mut event.body {
                    triad_domain::EventBody::TaskCompleted(c) => c.output = bytes,
                    triad_domain::EventBody::WorkflowAccepted(a) => a.tasks[0].prompt = bytes,
                    triad_domain::EventBody::WorkflowRejected(r) => {
                        r.reason = String::from_utf8_lossy(&bytes).into_owned()
                    }
                    _ => {}
                }
                event
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_events_round_trip(event in arb_event()) {
        round_trip(&event);
    }
}
