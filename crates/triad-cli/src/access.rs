//! `triad api-keys create|rotate|revoke|list`: API keys on `triad.api-keys` (docs/access.md).
//! The broker is the operator's door: these commands write the events directly, with the
//! actor recorded, and print a new key once — it is never stored anywhere but in the
//! caller's hands (the topic holds its SHA-256).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::message::Message;
use triad_auth::api_keys::{self, KeyRequest, KeyRing};
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{AccessRole, ApiKeyEvent};
use triad_kafka::topics::Names;

/// The keys of `triad.api-keys` as read now.
async fn ring(config: &Config, codec: &Codec) -> Result<KeyRing> {
    let names = Names::new(&config.kafka);
    let records =
        triad_kafka::consume::read_all(&config.kafka, &names.api_keys, Duration::from_secs(30))
            .await?;
    let mut ring = KeyRing::default();
    for m in records {
        let event: ApiKeyEvent = codec
            .decode(m.payload())
            .await
            .with_context(|| format!("{}@{} does not decode", names.api_keys, m.offset()))?;
        if let Err(problem) = ring.apply(&event) {
            tracing::warn!(%problem, messaging.kafka.offset = m.offset(), "API key event skipped");
        }
    }
    Ok(ring)
}

async fn write(config: &Config, codec: &Codec, event: &ApiKeyEvent) -> Result<()> {
    let names = Names::new(&config.kafka);
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    producer
        .send_record(codec, &names.api_keys, None, &event.key_id, event)
        .await?;
    Ok(())
}

fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
    )
}

fn print_new(key: &api_keys::NewKey) {
    eprintln!(
        "API key {} created; it is shown once, here — store it now:",
        key.event.key_id
    );
    println!("{}", key.text);
}

/// Creates a key for `tenant` with `role` and prints it (once).
pub async fn create(
    config: &Config,
    codec: &Codec,
    tenant: &str,
    role: &str,
    name: &str,
    expires_in_days: Option<u32>,
) -> Result<()> {
    let Some(role) = AccessRole::parse(role) else {
        bail!("--role: {role:?} is not member, tenant_admin or operator");
    };
    let key = write_new(config, codec, tenant, role, name, expires_in_days).await?;
    print_new(&key);
    Ok(())
}

/// Writes a new key for `tenant` with `role` and returns its text (for in-process callers,
/// such as the benchmarks, that talk to their own API).
pub async fn new_key(
    config: &Config,
    codec: &Codec,
    tenant: &str,
    role: AccessRole,
    name: &str,
) -> Result<String> {
    Ok(write_new(config, codec, tenant, role, name, None)
        .await?
        .text)
}

async fn write_new(
    config: &Config,
    codec: &Codec,
    tenant: &str,
    role: AccessRole,
    name: &str,
    expires_in_days: Option<u32>,
) -> Result<api_keys::NewKey> {
    let now = triad_kafka::now_micros();
    let actor = actor();
    let request = KeyRequest {
        tenant,
        role,
        name,
        expires_at: expires_in_days.map(|d| now + i64::from(d) * 86_400_000_000),
        replaces: None,
        actor: &actor,
    };
    // The error names the option (`--tenant: …`).
    let key = api_keys::generate(&request, now).map_err(|e| anyhow::anyhow!("--{e}"))?;
    write(config, codec, &key.event).await?;
    Ok(key)
}

/// Replaces `key_id` by a new key for the same tenant, role and name, then revokes it.
pub async fn rotate(config: &Config, codec: &Codec, key_id: &str) -> Result<()> {
    let ring = ring(config, codec).await?;
    let Some(old) = ring.get(key_id) else {
        bail!("{key_id}: no such API key (see `triad api-keys list`)");
    };
    let (key, revoked) = api_keys::rotation(old, &actor(), triad_kafka::now_micros())?;
    // The new key first: a crash in between leaves two working keys, never none.
    write(config, codec, &key.event).await?;
    write(config, codec, &revoked).await?;
    eprintln!("{key_id} revoked");
    print_new(&key);
    Ok(())
}

/// Revokes `key_id`: every API node refuses it once it reads the event.
pub async fn revoke(config: &Config, codec: &Codec, key_id: &str, reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        bail!("--reason: say why the key is revoked");
    }
    let ring = ring(config, codec).await?;
    let Some(old) = ring.get(key_id) else {
        bail!("{key_id}: no such API key (see `triad api-keys list`)");
    };
    if old.revoked.is_some() {
        println!("{key_id} was already revoked");
        return Ok(());
    }
    write(
        config,
        codec,
        &api_keys::revocation(key_id, reason, &actor(), triad_kafka::now_micros()),
    )
    .await?;
    println!("{key_id} revoked");
    Ok(())
}

/// Lists the keys (never their secrets), of one tenant when given.
pub async fn list(config: &Config, codec: &Codec, tenant: Option<&str>) -> Result<()> {
    let ring = ring(config, codec).await?;
    let now = triad_kafka::now_micros();
    let mut shown = 0;
    for k in ring
        .entries()
        .filter(|k| tenant.is_none_or(|t| k.created.tenant == t))
    {
        let state = match &k.revoked {
            Some((_, by, why)) => format!("revoked by {by}: {why}"),
            None => api_keys::state_at(k, now).to_owned(),
        };
        println!(
            "{} tenant {} role {} {:?} created by {} — {state}",
            k.key_id,
            k.created.tenant,
            k.created.role.as_str(),
            k.created.name,
            k.created_by
        );
        shown += 1;
    }
    if shown == 0 {
        println!("no API keys");
    }
    Ok(())
}
