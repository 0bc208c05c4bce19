//! The `tpm` key store against real TPM simulators: one `swtpm` process per simulated node,
//! each with its own state directory (started here, so the suite needs nothing running).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use triad_sovereignty::hpke::public_bytes;
use triad_sovereignty::tpm::DEFAULT_HANDLE;
use triad_sovereignty::{
    Binding, DirectoryChange, Error, KeyDirectory, NodeKey, Opener, Role, TpmKey, WorkflowKey,
};
use triad_testkit::swtpm::Swtpm;

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("triad-tpm-{}", uuid::Uuid::new_v4().simple()))
}

fn enrol(directory: &mut KeyDirectory, node: &str, zone: &str, key: &dyn NodeKey) {
    directory
        .apply(&DirectoryChange::Enrolled {
            node_id: node.into(),
            zone: zone.into(),
            public_key: public_bytes(key.public())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
        .unwrap();
}

const OUT: Binding<'static> = Binding {
    task_id: "answer",
    role: Role::Output,
    attempt: 1,
};

#[test]
fn a_tpm_node_opens_a_hundred_workflow_keys_with_the_dh_step_inside_the_tpm() {
    let tpm = Swtpm::start(&scratch());
    let key = Arc::new(TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap());
    let mut directory = KeyDirectory::default();
    enrol(&mut directory, "tpm-node", "US-EAST", &*key);
    for i in 0..100 {
        let (wk, record) =
            WorkflowKey::create(&directory, &format!("wf-{i}"), &["US-EAST"]).unwrap();
        let text = format!("payload {i}");
        let envelope = wk.seal(OUT, text.as_bytes()).unwrap();
        // A fresh opener each time: the workflow key is unwrapped through the TPM.
        let opener = Opener::new("tpm-node", "US-EAST", key.clone());
        let opened = opener.unseal(&directory, &record, &envelope).unwrap();
        assert_eq!(opened.as_slice(), text.as_bytes());
    }
}

#[test]
fn the_key_survives_a_simulator_restart_with_its_state_directory() {
    let tpm = Swtpm::start(&scratch());
    let key = Arc::new(TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap());
    let id = key.key_id().to_owned();
    let mut directory = KeyDirectory::default();
    enrol(&mut directory, "tpm-node", "US-EAST", &*key);
    let (wk, record) = WorkflowKey::create(&directory, "wf", &["US-EAST"]).unwrap();
    let envelope = wk.seal(OUT, b"kept").unwrap();
    drop(key);
    let dir = tpm.kill();
    let tpm = Swtpm::start(&dir);
    let key = Arc::new(TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap());
    assert_eq!(key.key_id(), id, "the persisted key, not a new one");
    let opened = Opener::new("tpm-node", "US-EAST", key)
        .unseal(&directory, &record, &envelope)
        .unwrap();
    assert_eq!(opened.as_slice(), b"kept");
    // A fresh simulator (another machine) has another key.
    let other = Swtpm::start(&scratch());
    let stranger = TpmKey::open(&other.tcti(), DEFAULT_HANDLE).unwrap();
    assert_ne!(stranger.key_id(), id);
}

#[test]
fn the_signing_key_lives_in_the_tpm_signs_there_and_survives_a_restart() {
    use triad_sovereignty::signing::{Signer, verify};
    let tpm = Swtpm::start(&scratch());
    let key = TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap();
    let signer = key.signer();
    // Two keys for two purposes: the signing key is not the unwrapping key.
    assert_ne!(signer.key_id(), key.key_id());
    let public = *signer.public();
    let id = signer.key_id().to_owned();
    for i in 0..20u32 {
        let message = format!("execution record {i}");
        let signature = triad_sovereignty::hex(&signer.sign(message.as_bytes()).unwrap());
        assert!(
            verify(&public, message.as_bytes(), &signature),
            "signature {i}"
        );
        assert!(!verify(&public, b"another record", &signature));
        assert!(!verify(key.public(), message.as_bytes(), &signature));
    }
    // ZGen and signing share the one connection a simulator serves.
    let mut directory = KeyDirectory::default();
    let key = Arc::new(key);
    enrol(&mut directory, "n", "US-EAST", &*key);
    let (wk, record) = WorkflowKey::create(&directory, "wf", &["US-EAST"]).unwrap();
    let envelope = wk.seal(OUT, b"both").unwrap();
    let opened = Opener::new("n", "US-EAST", key.clone())
        .unseal(&directory, &record, &envelope)
        .unwrap();
    assert_eq!(opened.as_slice(), b"both");
    assert!(verify(
        &public,
        b"after",
        &triad_sovereignty::hex(&signer.sign(b"after").unwrap())
    ));
    drop((signer, key));
    let dir = tpm.kill();
    let tpm = Swtpm::start(&dir);
    let again = TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap().signer();
    assert_eq!(
        again.key_id(),
        id,
        "the persisted signing key, not a new one"
    );
}

#[test]
fn one_nodes_tpm_cannot_open_what_was_sealed_only_to_another() {
    let (ta, tb) = (Swtpm::start(&scratch()), Swtpm::start(&scratch()));
    let a = Arc::new(TpmKey::open(&ta.tcti(), DEFAULT_HANDLE).unwrap());
    let b = Arc::new(TpmKey::open(&tb.tcti(), DEFAULT_HANDLE).unwrap());
    let mut directory = KeyDirectory::default();
    enrol(&mut directory, "a", "US-EAST", &*a);
    let (wk, record) = WorkflowKey::create(&directory, "wf", &["US-EAST"]).unwrap();
    let envelope = wk.seal(OUT, b"for a only").unwrap();
    enrol(&mut directory, "b", "US-EAST", &*b);
    let err = Opener::new("b", "US-EAST", b.clone())
        .unseal(&directory, &record, &envelope)
        .unwrap_err();
    assert!(matches!(err, Error::SovereigntyViolation { .. }), "{err}");
    // Even handed a's wrapped key under its own key id, b's TPM derives another secret.
    let mut forged = record.clone();
    forged.wrapped[0].key_id = b.key_id().to_owned();
    forged.wrapped[0].node_id = "b".into();
    let err = Opener::new("b", "US-EAST", b)
        .unseal(&directory, &forged, &envelope)
        .unwrap_err();
    assert!(matches!(err, Error::Unwrap { .. }), "{err}");
}

/// Run as a child process by the next test: loads transient objects into the TPM, says so,
/// and waits to be killed with SIGKILL (so nothing is flushed).
#[test]
fn child_that_dies_holding_tpm_objects() {
    let Ok(tcti) = std::env::var("XTRIAD_TPM_CHILD") else {
        return;
    };
    use std::str::FromStr;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::AuthSession;
    let mut ctx =
        tss_esapi::Context::new(tss_esapi::TctiNameConf::from_str(&tcti).unwrap()).unwrap();
    let template = tss_esapi::utils::create_unrestricted_signing_ecc_public(
        tss_esapi::structures::EccScheme::EcDsa(tss_esapi::structures::HashScheme::new(
            tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256,
        )),
        tss_esapi::interface_types::ecc::EccCurve::NistP256,
    )
    .unwrap();
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        for _ in 0..3 {
            ctx.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
                .unwrap();
        }
    });
    println!("holding");
    std::thread::park();
}

#[test]
fn repeated_kill_9_of_a_node_does_not_exhaust_the_tpms_slots() {
    let tpm = Swtpm::start(&scratch());
    let key = TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap();
    let id = key.key_id().to_owned();
    drop(key);
    // The simulator holds 3 transient objects; each dead child fills them all. Without the
    // flush at start the second round could not load anything.
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_that_dies_holding_tpm_objects",
                "--nocapture",
            ])
            .env("XTRIAD_TPM_CHILD", tpm.tcti())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().contains("holding")),
            "round {round}: the child did not load its objects"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let key = Arc::new(TpmKey::open(&tpm.tcti(), DEFAULT_HANDLE).unwrap());
        assert_eq!(key.flushed_at_start, 3, "round {round}");
        assert_eq!(key.key_id(), id);
        let mut directory = KeyDirectory::default();
        enrol(&mut directory, "n", "US-EAST", &*key);
        let (wk, record) = WorkflowKey::create(&directory, "wf", &["US-EAST"]).unwrap();
        let envelope = wk.seal(OUT, b"still works").unwrap();
        let opened = Opener::new("n", "US-EAST", key)
            .unseal(&directory, &record, &envelope)
            .unwrap();
        assert_eq!(opened.as_slice(), b"still works");
    }
}
