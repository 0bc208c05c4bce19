//! The operator-signed key directory through the real binary and broker: enrol, revoke,
//! list; edge validation; and a forged change on the topic is refused by every reader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;

use support::{Env, after, cli, cli_ok};
use triad_domain::{DirectoryBody, KeyDirectoryChange, NodeEnrolled};

fn run(env: &Env, args: &[&str]) -> Output {
    cli(env, args, &[])
}

fn ok(env: &Env, args: &[&str]) -> String {
    cli_ok(env, args, &[]).0
}

fn fails(env: &Env, args: &[&str], expected: &str) {
    let out = run(env, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

/// The arguments of `triad keys enrol` for `node` in `zone` with `public_key` only.
fn enrol<'a>(node: &'a str, zone: &'a str, public_key: &'a str, op: &'a str) -> Vec<&'a str> {
    support::enrol_args(node, zone, Some(public_key), None, op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_signs_the_directory_and_readers_refuse_anything_else() {
    let mut env = Env::new(1).await;
    let dir = std::env::temp_dir().join(format!("triad-it-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let op = dir.join("operator.key");
    let out = ok(
        &env,
        &["keys", "operator-init", "--out", op.to_str().unwrap()],
    );
    let operator_public = after(&out, "operator_public_key = ").to_owned();
    fails(
        &env,
        &["keys", "operator-init", "--out", op.to_str().unwrap()],
        "never overwritten",
    );
    env.extra_env = vec![
        (
            "TRIAD_SOVEREIGNTY__OPERATOR_PUBLIC_KEY".into(),
            operator_public,
        ),
        (
            "TRIAD_SOVEREIGNTY__KEY_DIR".into(),
            dir.join("keys").display().to_string(),
        ),
    ];
    let east = ok(&env, &["keys", "node-key", "--node", "us-east-0"]);
    let east_pk = after(&east, "public key ").to_owned();
    let east_id = after(&east, "key id ").to_owned();
    assert_eq!(
        ok(&env, &["keys", "node-key", "--node", "us-east-0"]),
        east,
        "the node key is created once"
    );
    let eu = ok(&env, &["keys", "node-key", "--node", "eu-west-0"]);
    let (eu_pk, eu_id) = (
        after(&eu, "public key ").to_owned(),
        after(&eu, "key id ").to_owned(),
    );
    let op = op.to_str().unwrap();
    ok(&env, &enrol("us-east-0", "US-EAST", &east_pk, op));
    ok(&env, &enrol("eu-west-0", "EU-WEST", &eu_pk, op));
    ok(
        &env,
        &["keys", "revoke", "--key-id", &eu_id, "--operator-key", op],
    );

    // Refused at the edge, nothing written.
    fails(
        &env,
        &enrol("x", "MARS", &east_pk, op),
        "zone MARS is not in policy.zones",
    );
    fails(
        &env,
        &enrol("again", "US-EAST", &east_pk, op),
        "already enrolled",
    );
    fails(
        &env,
        &["keys", "retire", "--key-id", &eu_id, "--operator-key", op],
        "revoked",
    );
    let rogue = dir.join("rogue.key");
    ok(
        &env,
        &["keys", "operator-init", "--out", rogue.to_str().unwrap()],
    );
    fails(
        &env,
        &[
            "keys",
            "enrol",
            "--node",
            "r",
            "--zone",
            "US-EAST",
            "--public-key",
            &east_pk,
            "--operator-key",
            rogue.to_str().unwrap(),
        ],
        "is not the operator key the configuration names",
    );

    let listed = ok(&env, &["keys", "list"]);
    assert!(listed.contains("key directory: 3 changes"), "{listed}");
    let line = |id: &str| listed.lines().find(|l| l.contains(id)).unwrap().to_owned();
    assert!(
        line(&east_id).contains("US-EAST") && line(&east_id).ends_with("active"),
        "{listed}"
    );
    assert!(
        line(&eu_id).contains("EU-WEST") && line(&eu_id).ends_with("revoked"),
        "{listed}"
    );

    // Someone with write access to the topic appends a change of their own.
    let forged = KeyDirectoryChange {
        sequence: 4,
        previous: after(&listed, "head ").to_owned(),
        change: DirectoryBody::NodeEnrolled(NodeEnrolled {
            node_id: "intruder".into(),
            zone: "US-EAST".into(),
            public_key: eu_pk.clone(),
        }),
        signer: after(&listed, "head ").get(..32).unwrap().to_owned(),
        signature: "00".repeat(64),
        schema_version: 1,
    };
    env.producer
        .send_record(
            &env.codec,
            &env.names.key_directory,
            None,
            "directory",
            &forged,
        )
        .await
        .unwrap();
    fails(&env, &["keys", "list"], "refused");
    fails(
        &env,
        &["keys", "revoke", "--key-id", &east_id, "--operator-key", op],
        "refused",
    );
}
