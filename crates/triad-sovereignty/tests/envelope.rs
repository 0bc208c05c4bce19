//! Envelopes against the threat model (docs/threat_model.md): what is bound cannot change,
//! what is sealed to a zone opens only on an enrolled node of that zone, and key lifecycle
//! (rotation, revocation, shredding) does what it says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use proptest::prelude::*;
use triad_sovereignty::hpke::public_bytes;
use triad_sovereignty::{
    Binding, DirectoryChange, Envelope, Error, KeyDirectory, NodeKey, Opener, Role, SoftwareKey,
    WorkflowKey, WorkflowKeyRecord,
};

struct Node {
    key: Arc<SoftwareKey>,
    id: String,
    zone: String,
}

impl Node {
    fn new(id: &str, zone: &str) -> Self {
        Self {
            key: Arc::new(SoftwareKey::generate()),
            id: id.into(),
            zone: zone.into(),
        }
    }

    fn enrolment(&self) -> DirectoryChange {
        DirectoryChange::Enrolled {
            node_id: self.id.clone(),
            zone: self.zone.clone(),
            public_key: hex(&public_bytes(self.key.public())),
        }
    }

    fn opener(&self) -> Opener {
        Opener::new(&self.id, &self.zone, self.key.clone())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct World {
    east: Node,
    east2: Node,
    west: Node,
    eu: Node,
    directory: KeyDirectory,
}

fn world() -> World {
    let east = Node::new("us-east-0", "US-EAST");
    let east2 = Node::new("us-east-1", "US-EAST");
    let west = Node::new("us-west-0", "US-WEST");
    let eu = Node::new("eu-west-0", "EU-WEST");
    let mut directory = KeyDirectory::default();
    for n in [&east, &east2, &west, &eu] {
        directory.apply(&n.enrolment()).unwrap();
    }
    World {
        east,
        east2,
        west,
        eu,
        directory,
    }
}

const ANSWER: Binding<'static> = Binding {
    task_id: "answer",
    role: Role::Output,
    attempt: 1,
};

fn conus_sealed(w: &World, text: &[u8]) -> (WorkflowKeyRecord, Envelope) {
    let (key, record) = WorkflowKey::create(&w.directory, "wf-1", &["US-WEST", "US-EAST"]).unwrap();
    (record, key.seal(ANSWER, text).unwrap())
}

fn assert_tampered(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    match r {
        Err(Error::Tampered { .. } | Error::Unwrap { .. }) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

fn assert_violation(r: Result<impl std::fmt::Debug, Error>, reason: &str) {
    match r {
        Err(e @ Error::SovereigntyViolation { .. }) => {
            let text = e.to_string();
            assert!(text.contains(reason), "{text}");
        }
        other => panic!("expected a sovereignty violation ({reason}), got {other:?}"),
    }
}

#[test]
fn every_enrolled_node_of_an_allowed_zone_opens_it() {
    let w = world();
    let (record, env) = conus_sealed(&w, b"4");
    for n in [&w.east, &w.east2, &w.west] {
        let pt = n.opener().unseal(&w.directory, &record, &env).unwrap();
        assert_eq!(pt.as_slice(), b"4");
    }
    assert_eq!(env.zones, ["US-EAST", "US-WEST"], "zones are canonical");
    assert_eq!(
        record.wrapped.len(),
        3,
        "one wrap per active key of each zone"
    );
    assert_eq!(env.ciphertext.len(), 1 + 16);
}

#[test]
fn a_node_outside_the_zones_or_not_enrolled_gets_a_sovereignty_violation() {
    let w = world();
    let (record, env) = conus_sealed(&w, b"secret");
    let err = w.eu.opener().unseal(&w.directory, &record, &env);
    assert_violation(err, "the node's zone is not one of the envelope's");
    let err =
        w.eu.opener()
            .unseal(&w.directory, &record, &env)
            .unwrap_err();
    assert!(
        err.to_string().contains(
            "node eu-west-0 in zone EU-WEST may not open a payload sealed to US-EAST, US-WEST"
        ),
        "{err}"
    );
    // A node claiming an allowed zone with a key nobody enrolled.
    let stranger = Node::new("rogue", "US-EAST");
    assert_violation(
        stranger.opener().unseal(&w.directory, &record, &env),
        "not enrolled",
    );
    // An enrolled key presenting itself in another zone.
    let liar = Opener::new("us-east-0", "US-WEST", w.east.key.clone());
    assert_violation(liar.unseal(&w.directory, &record, &env), "not enrolled");
}

#[test]
fn flipping_any_bit_of_any_bound_or_sealed_field_fails() {
    let w = world();
    let (record, env) = conus_sealed(&w, b"the answer is 4");
    let open = |r: &WorkflowKeyRecord, e: &Envelope| w.east.opener().unseal(&w.directory, r, e);
    open(&record, &env).unwrap();
    let flip = |bytes: &mut Vec<u8>, bit: usize| bytes[bit / 8] ^= 1 << (bit % 8);
    let tag_start = (env.ciphertext.len() - 16) * 8;
    for bit in [0, 7, tag_start, tag_start + 127] {
        let mut e = env.clone();
        flip(&mut e.ciphertext, bit);
        e.ciphertext_sha256 = sha256(&e.ciphertext); // an attacker can recompute the hash
        assert_tampered(open(&record, &e), "ciphertext/tag");
    }
    for bit in [0, 95] {
        let mut e = env.clone();
        flip(&mut e.nonce, bit);
        assert_tampered(open(&record, &e), "nonce");
    }
    let mut e = env.clone();
    flip(&mut e.ciphertext_sha256, 3);
    assert_tampered(open(&record, &e), "ciphertext hash");
    let mut e = env.clone();
    e.envelope_id = flip_char(&e.envelope_id);
    assert_tampered(open(&record, &e), "envelope id");
    // Fields that also name the workflow key must be changed in the record too, or the
    // record check refuses first; change both and the AAD or the wrap refuses.
    let mut e = env.clone();
    let mut r = record.clone();
    e.workflow_key_id = flip_char(&e.workflow_key_id);
    r.workflow_key_id.clone_from(&e.workflow_key_id);
    assert_tampered(open(&r, &e), "workflow key id");
    let mut e = env.clone();
    let mut r = record.clone();
    e.workflow_id = "wf-2".into();
    r.workflow_id = "wf-2".into();
    assert_tampered(open(&r, &e), "workflow id");
    assert_tampered(open(&record, &e), "workflow id, record unchanged");
    let mut e = env.clone();
    e.format = 2;
    assert!(matches!(open(&record, &e), Err(Error::Format { .. })));
    // The wrapped key: each byte of enc and of the wrapped key is authenticated.
    for (field, bit) in [
        ("enc", 8 * 10),
        ("enc", 8 * 64 + 1),
        ("wrapped", 0),
        ("wrapped", 8 * 47 + 7),
    ] {
        let mut r = record.clone();
        let mine = r
            .wrapped
            .iter_mut()
            .find(|k| k.key_id == w.east.key.key_id())
            .unwrap();
        match field {
            "enc" => flip(&mut mine.enc, bit),
            _ => flip(&mut mine.wrapped, bit),
        }
        assert_tampered(open(&r, &env), field); // a fresh opener: nothing cached
    }
}

#[test]
fn an_envelope_moved_to_another_task_role_attempt_or_zone_set_fails() {
    let w = world();
    let (record, env) = conus_sealed(&w, b"payload");
    let open = |e: &Envelope| w.east.opener().unseal(&w.directory, &record, e);
    let mut e = env.clone();
    e.task_id = "other".into();
    assert_tampered(open(&e), "task");
    let mut e = env.clone();
    e.role = Role::Prompt;
    assert_tampered(open(&e), "role");
    let mut e = env.clone();
    e.attempt = 2;
    assert_tampered(open(&e), "attempt");
    let mut e = env.clone();
    let mut r = record.clone();
    e.zones = vec!["US-EAST".into()];
    r.zones = vec!["US-EAST".into()];
    assert_tampered(w.east.opener().unseal(&w.directory, &r, &e), "zones");
}

#[test]
fn rotation_keeps_old_payloads_readable_and_revocation_stops_new_ones() {
    let mut w = world();
    let (old_record, old_env) = conus_sealed(&w, b"before");
    // us-east-0 rotates: a new key is enrolled, the old one retired but kept.
    let rotated = Node::new("us-east-0", "US-EAST");
    w.directory.apply(&rotated.enrolment()).unwrap();
    w.directory
        .apply(&DirectoryChange::Retired {
            key_id: w.east.key.key_id().into(),
        })
        .unwrap();
    let (record, env) = conus_sealed(&w, b"after");
    assert!(
        record
            .wrapped
            .iter()
            .all(|k| k.key_id != w.east.key.key_id())
    );
    assert_eq!(
        rotated
            .opener()
            .unseal(&w.directory, &record, &env)
            .unwrap()
            .as_slice(),
        b"after"
    );
    assert_eq!(
        w.east
            .opener()
            .unseal(&w.directory, &old_record, &old_env)
            .unwrap()
            .as_slice(),
        b"before",
        "the retired key still opens what was sealed to it"
    );
    assert_violation(
        w.east.opener().unseal(&w.directory, &record, &env),
        "was not wrapped to this node's key",
    );
    // us-east-1 is revoked: nothing sealed afterwards is wrapped to it, and it opens nothing.
    w.directory
        .apply(&DirectoryChange::Revoked {
            key_id: w.east2.key.key_id().into(),
        })
        .unwrap();
    let (record, env) = conus_sealed(&w, b"after revocation");
    assert!(
        record
            .wrapped
            .iter()
            .all(|k| k.key_id != w.east2.key.key_id())
    );
    assert_violation(
        w.east2.opener().unseal(&w.directory, &record, &env),
        "revoked",
    );
    // Even a revoked node that skipped the directory check finds no key wrapped to it: an
    // honest directory for it (re-enrolled view) still cannot unwrap.
    let mut forged_view = KeyDirectory::default();
    forged_view.apply(&w.east2.enrolment()).unwrap();
    assert_violation(
        w.east2.opener().unseal(&forged_view, &record, &env),
        "was not wrapped to this node's key",
    );
}

#[test]
fn shredding_the_workflow_key_makes_every_payload_unreadable() {
    let w = world();
    let (key, record) = WorkflowKey::create(&w.directory, "wf-erase", &["US-EAST"]).unwrap();
    let envelopes: Vec<Envelope> = (0..5)
        .map(|i| {
            key.seal(
                Binding {
                    task_id: "t",
                    role: Role::Output,
                    attempt: i,
                },
                b"personal data",
            )
            .unwrap()
        })
        .collect();
    let opener = w.east.opener();
    for e in &envelopes {
        opener.unseal(&w.directory, &record, e).unwrap();
    }
    drop(key);
    // Erasure: the record's wrapped keys are destroyed and nodes forget the unwrapped key.
    let destroyed = WorkflowKeyRecord {
        wrapped: Vec::new(),
        ..record.clone()
    };
    opener.forget(&record.workflow_key_id);
    for e in &envelopes {
        assert_violation(
            opener.unseal(&w.directory, &destroyed, e),
            "was not wrapped to this node's key",
        );
        assert_violation(
            w.east2.opener().unseal(&w.directory, &destroyed, e),
            "was not wrapped",
        );
    }
}

#[test]
fn a_zone_without_enrolled_keys_cannot_be_sealed_to() {
    let w = world();
    let err = WorkflowKey::create(&w.directory, "wf", &["US-EAST", "AP-SOUTH"]).unwrap_err();
    assert!(
        matches!(&err, Error::NoRecipients { zone } if zone == "AP-SOUTH"),
        "{err}"
    );
}

#[test]
fn envelopes_and_records_round_trip_through_json_and_refuse_unknown_fields() {
    let w = world();
    let (record, env) = conus_sealed(&w, b"json");
    let text = serde_json::to_string(&env).unwrap();
    let back: Envelope = serde_json::from_str(&text).unwrap();
    assert_eq!(back, env);
    let record_back: WorkflowKeyRecord =
        serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
    assert_eq!(record_back, record);
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["plaintext"] = "oops".into();
    assert!(serde_json::from_value::<Envelope>(v).is_err());
}

fn flip_char(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    b[0] ^= 1;
    String::from_utf8(b).unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_payloads_round_trip_and_any_single_bit_flip_is_refused(
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        bit in any::<prop::sample::Index>(),
    ) {
        let w = world();
        let (record, env) = conus_sealed(&w, &payload);
        let opener = w.west.opener();
        let opened = opener.unseal(&w.directory, &record, &env).unwrap();
        prop_assert_eq!(opened.as_slice(), payload.as_slice());
        let mut e = env.clone();
        let bit = bit.index(e.ciphertext.len() * 8);
        e.ciphertext[bit / 8] ^= 1 << (bit % 8);
        e.ciphertext_sha256 = sha256(&e.ciphertext);
        let refused = matches!(opener.unseal(&w.directory, &record, &e), Err(Error::Tampered { .. }));
        prop_assert!(refused, "bit {} flipped and still opened", bit);
    }
}

fn kernel(node: &Node, directory: &KeyDirectory) -> triad_sovereignty::Kernel {
    let k = triad_sovereignty::Kernel::new(&node.id, &node.zone, node.key.clone());
    k.set_directory(directory.clone());
    k
}

/// The kernel as the flow uses it: the edge seals a prompt into a payload field, an executor
/// inside the zones opens it and seals the output under the same workflow key, a reader
/// outside cannot, a payload moved to another place is refused, shredding forgets.
#[test]
fn kernel_seals_and_opens_payload_fields_only_where_they_belong() {
    let w = world();
    let edge = kernel(&w.east, &w.directory);
    let executor = kernel(&w.west, &w.directory);
    let outsider = kernel(&w.eu, &w.directory);
    let record = edge.create("wf-1", &["US-WEST", "US-EAST"]).unwrap();
    for k in [&executor, &outsider] {
        k.put_record(record.clone());
    }
    let kid = record.workflow_key_id.clone();
    let prompt = edge
        .seal(
            &kid,
            Binding {
                task_id: "t1",
                role: Role::Prompt,
                attempt: 0,
            },
            b"the secret prompt",
        )
        .unwrap();
    assert!(Envelope::is_sealed(&prompt));
    assert!(
        !prompt.windows(6).any(|w| w == b"secret"),
        "no plaintext on the wire"
    );
    let at = |task_id, role| triad_sovereignty::Expect {
        workflow_id: "wf-1",
        task_id,
        role,
    };
    let opened = executor.open(&prompt, at("t1", Role::Prompt)).unwrap();
    assert_eq!(opened.bytes(), b"the secret prompt");
    assert_eq!(opened.workflow_key_id(), Some(kid.as_str()));
    // Moved to another task or role: refused though the envelope itself is intact.
    assert!(matches!(
        executor.open(&prompt, at("t2", Role::Prompt)),
        Err(Error::Tampered { .. })
    ));
    assert!(matches!(
        executor.open(&prompt, at("t1", Role::Output)),
        Err(Error::Tampered { .. })
    ));
    // Outside the zones: a violation naming them.
    match outsider.open(&prompt, at("t1", Role::Prompt)) {
        Err(Error::SovereigntyViolation { envelope_zones, .. }) => {
            assert_eq!(envelope_zones, ["US-EAST", "US-WEST"]);
        }
        other => panic!("expected a violation, got {other:?}"),
    }
    // The executor seals the output under the key the prompt came with (it unwraps it).
    let output = executor
        .seal(
            &kid,
            Binding {
                task_id: "t1",
                role: Role::Output,
                attempt: 2,
            },
            b"the answer",
        )
        .unwrap();
    assert_eq!(
        edge.open(&output, at("t1", Role::Output)).unwrap().bytes(),
        b"the answer"
    );
    // An outsider cannot seal under it either.
    assert!(matches!(
        outsider.seal(
            &kid,
            Binding {
                task_id: "t1",
                role: Role::Output,
                attempt: 0
            },
            b"x"
        ),
        Err(Error::SovereigntyViolation { .. })
    ));
    // Plaintext passes through untouched.
    assert!(matches!(
        executor.open(b"plain", at("t1", Role::Prompt)).unwrap(),
        triad_sovereignty::Opened::Plain(b"plain")
    ));
    // A node that has not seen the record yet says so (the caller waits for it).
    let late = kernel(&w.east2, &w.directory);
    assert!(matches!(
        late.open(&prompt, at("t1", Role::Prompt)),
        Err(Error::UnknownWorkflowKey { .. })
    ));
    // Shredding: the record and every cached copy go; nothing opens any more.
    executor.shred(&kid);
    assert!(matches!(
        executor.open(&output, at("t1", Role::Output)),
        Err(Error::UnknownWorkflowKey { .. })
    ));
    assert!(
        executor
            .seal(
                &kid,
                Binding {
                    task_id: "t1",
                    role: Role::Output,
                    attempt: 3
                },
                b"y"
            )
            .is_err()
    );
}
