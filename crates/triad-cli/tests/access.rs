//! API keys on the real broker (issue 8, docs/access.md): `triad api-keys` creates a key and
//! prints it once, the topic holds only its hash, rotation hands over a new key and revokes
//! the old one, revocation is an event — and the fold every API node keeps
//! (`triad_auth::api_keys::KeyRing`) accepts and refuses exactly as the events say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{Env, cli, cli_ok};
use triad_auth::Rejection;
use triad_auth::api_keys::{KeyRing, sha256_hex};
use triad_domain::{AccessRole, ApiKeyBody, ApiKeyEvent};

async fn events(env: &Env, n: usize) -> Vec<ApiKeyEvent> {
    env.read_until(
        &env.names.api_keys,
        Duration::from_secs(60),
        "API key events",
        |e: &[ApiKeyEvent]| e.len() >= n,
    )
    .await
}

fn ring(events: &[ApiKeyEvent]) -> KeyRing {
    let mut ring = KeyRing::default();
    for e in events {
        ring.apply(e).unwrap();
    }
    ring
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shown_once_stored_as_hashes_rotated_and_revoked_through_events() {
    let env = Env::new(1).await;
    // Bad requests name the flag and write nothing.
    let out = cli(
        &env,
        &[
            "api-keys",
            "create",
            "--tenant",
            "Acme Corp",
            "--name",
            "ci",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant:"));
    let out = cli(
        &env,
        &[
            "api-keys", "create", "--tenant", "acme", "--role", "root", "--name", "ci",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role:"));

    let (key, notice) = cli_ok(
        &env,
        &[
            "api-keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "tenant_admin",
            "--name",
            "ci",
        ],
        &[],
    );
    let key = key.trim().to_owned();
    assert!(
        key.starts_with("triad_") && key.len() == 6 + 16 + 1 + 64,
        "{key}"
    );
    assert!(notice.contains("shown once"), "{notice}");
    let created = events(&env, 1).await;
    let ApiKeyBody::ApiKeyCreated(c) = &created[0].body else {
        panic!("{:?}", created[0])
    };
    assert_eq!(c.sha256, sha256_hex(&key), "the topic holds the hash");
    assert!(
        !format!("{created:?}").contains(&key[23..]),
        "never the secret"
    );
    assert!(created[0].actor.starts_with("cli:"));
    let who = ring(&created)
        .authenticate(&key, triad_kafka::now_micros())
        .unwrap();
    assert_eq!(
        (who.tenant.as_str(), who.role),
        ("acme", AccessRole::TenantAdmin)
    );

    // Rotation: a new key for the same tenant and role, and the old one revoked.
    let old_id = &created[0].key_id;
    let (rotated, _) = cli_ok(&env, &["api-keys", "rotate", old_id], &[]);
    let rotated = rotated.trim().to_owned();
    assert_ne!(rotated, key);
    let all = events(&env, 3).await;
    let now = triad_kafka::now_micros();
    let keys = ring(&all);
    assert_eq!(keys.authenticate(&key, now), Err(Rejection::Revoked));
    let who = keys.authenticate(&rotated, now).unwrap();
    assert_eq!(
        (who.tenant.as_str(), who.role),
        ("acme", AccessRole::TenantAdmin)
    );
    let ApiKeyBody::ApiKeyCreated(new) = &all[1].body else {
        panic!("{:?}", all[1])
    };
    assert_eq!(new.replaces.as_deref(), Some(old_id.as_str()));

    // Revocation with a reason; the listing shows every state, no secrets.
    let new_id = all[1].key_id.clone();
    let out = cli(&env, &["api-keys", "revoke", &new_id, "--reason", " "], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason"));
    cli_ok(
        &env,
        &["api-keys", "revoke", &new_id, "--reason", "leaked in a log"],
        &[],
    );
    let all = events(&env, 4).await;
    assert_eq!(
        ring(&all).authenticate(&rotated, triad_kafka::now_micros()),
        Err(Rejection::Revoked)
    );
    let (listing, _) = cli_ok(&env, &["api-keys", "list", "--tenant", "acme"], &[]);
    assert!(
        listing.contains(&format!("{old_id} tenant acme role tenant_admin")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("rotated to {new_id}")),
        "{listing}"
    );
    assert!(listing.contains("leaked in a log"), "{listing}");
    assert!(!listing.contains(&key[23..]) && !listing.contains(&rotated[23..]));
    let (none, _) = cli_ok(&env, &["api-keys", "list", "--tenant", "globex"], &[]);
    assert_eq!(none.trim(), "no API keys");
}
