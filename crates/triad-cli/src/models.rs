//! `triad models register`: a new component version for a running `wasm` model (hot swap).
//! The component is checked here first (it must link against the host and answer
//! `capabilities`), so a bad one is refused before anything is written; executors check it
//! again when they install it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::{Config, ModelKind};
use triad_domain::{ExecutorStatus, INLINE_COMPONENT_MAX_BYTES, ModelRegistration, StatusBody};
use triad_kafka::topics::Names;

pub struct Register<'a> {
    pub model: &'a str,
    pub component: &'a Path,
    pub by_path: bool,
    pub version: Option<i64>,
    pub wait_for: usize,
    pub timeout: Duration,
}

pub async fn register(config: &Config, codec: Arc<Codec>, r: &Register<'_>) -> Result<()> {
    let model = config.models.get(r.model).with_context(|| {
        format!(
            "model {:?} is not in this configuration's [models] (known: {})",
            r.model,
            config.models.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    if model.kind != ModelKind::Wasm {
        bail!(
            "models.{}.kind is {:?}: only kind = \"wasm\" models run registered components",
            r.model,
            model.kind
        );
    }
    let bytes = std::fs::read(r.component)
        .with_context(|| format!("reading the component {}", r.component.display()))?;
    let sha256 = triad_store::sha256_hex(&bytes);
    let size = bytes.len();
    if size > INLINE_COMPONENT_MAX_BYTES && !r.by_path {
        bail!(
            "the component has {size} bytes; a registration carries at most {INLINE_COMPONENT_MAX_BYTES}: \
             put it where every executor can read it and pass --by-path"
        );
    }
    // The same checks an executor makes, before anything is written.
    triad_wasm::WasmModel::load(
        crate::workers::wasm_host()?,
        r.model,
        model.zones.clone(),
        &bytes,
        triad_wasm::Egress::none()?,
    )
    .await
    .with_context(|| format!("{} is not a usable adapter", r.component.display()))?;

    let names = Names::new(&config.kafka);
    let latest = latest_version(config, &codec, &names.models, r.model).await?;
    let version = match r.version {
        Some(v) if v <= latest => {
            bail!(
                "--version {v} is not above the latest version of {} ({latest})",
                r.model
            )
        }
        Some(v) => v,
        None => latest + 1,
    };
    let (component, component_path) = if r.by_path {
        let path = std::fs::canonicalize(r.component)
            .with_context(|| format!("resolving {}", r.component.display()))?;
        (None, Some(path.display().to_string()))
    } else {
        (Some(bytes), None)
    };
    let registration = ModelRegistration {
        model_id: r.model.to_owned(),
        version,
        component_sha256: sha256.clone(),
        component_size: i64::try_from(size)?,
        component,
        component_path,
        registered_at: triad_kafka::now_micros(),
        remote: None,
        schema_version: triad_domain::MODEL_REGISTRATION_SCHEMA_VERSION,
    };
    let status_from = high_watermark(config, &names.executor_status)?;
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    let delivered = producer
        .send_record(&codec, &names.models, None, r.model, &registration)
        .await?;
    println!(
        "registered {} version {version}: sha256 {sha256}, {size} bytes ({}), {}@{}",
        r.model,
        if r.by_path {
            "by path"
        } else {
            "in the record"
        },
        names.models,
        delivered.offset
    );
    if r.wait_for > 0 {
        wait_for_installs(config, codec, &names, r, version, status_from).await?;
    }
    Ok(())
}

/// The highest version registered for `model` (1, the configured component, when none).
async fn latest_version(config: &Config, codec: &Codec, topic: &str, model: &str) -> Result<i64> {
    let records =
        triad_kafka::consume::read_all(&config.kafka, topic, Duration::from_secs(30)).await?;
    let mut latest = 1;
    for m in records {
        if m.key() != Some(model.as_bytes()) {
            continue;
        }
        match codec.decode::<ModelRegistration>(m.payload()).await {
            Ok(r) => latest = latest.max(r.version),
            Err(error) => {
                tracing::warn!(%error, offset = m.offset(), "undecodable registration skipped")
            }
        }
    }
    Ok(latest)
}

fn high_watermark(config: &Config, topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = triad_kafka::client::reader_config(&config.kafka).create()?;
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    Ok(high)
}

/// Prints each executor's answer to the registration until `wait_for` executors answered.
async fn wait_for_installs(
    config: &Config,
    codec: Arc<Codec>,
    names: &Names,
    r: &Register<'_>,
    version: i64,
    from: i64,
) -> Result<()> {
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let done = CancellationToken::new();
    let follow = triad_kafka::tail::follow(
        &config.kafka,
        &names.executor_status,
        Offset::Offset(from),
        done.clone(),
        None,
        |m| {
            let (codec, answered, refused, done) = (
                codec.clone(),
                answered.clone(),
                refused.clone(),
                done.clone(),
            );
            async move {
                let Ok(status) = codec.decode::<ExecutorStatus>(m.payload()).await else {
                    return;
                };
                let StatusBody::AdapterInstall(install) = status.body else {
                    return;
                };
                if install.model_id != r.model || install.version != version {
                    return;
                }
                if install.installed {
                    println!("  {}: installed", status.executor_id);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    let reason = install.reason.unwrap_or_default();
                    println!("  {}: refused: {reason}", status.executor_id);
                }
                if answered.fetch_add(1, Ordering::Relaxed) + 1 >= r.wait_for {
                    done.cancel();
                }
            }
        },
    );
    match tokio::time::timeout(r.timeout, follow).await {
        Ok(result) => result?,
        Err(_) => bail!(
            "{} of {} executors answered within {} s",
            answered.load(Ordering::Relaxed),
            r.wait_for,
            r.timeout.as_secs()
        ),
    }
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        bail!("{refused} executor(s) refused version {version}");
    }
    Ok(())
}

/// A registration file (`triad models add`, or a `models.toml` bootstrap): `[models.<id>]`
/// tables in TOML, or `{"models": {"<id>": {…}}}` in JSON, each a registration document
/// (docs/market.md).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    models: std::collections::BTreeMap<String, triad_market::registry::RemoteSpec>,
}

/// The configured models (`[models.*]` and enabled presets): a registration cannot take
/// their ids.
async fn configured_ids(config: &Config) -> Result<std::collections::BTreeSet<String>> {
    Ok(crate::workers::catalogue(config)
        .await?
        .ids()
        .into_iter()
        .collect())
}

/// The rules a registration is checked against under this configuration's policy.
fn rules<'a>(
    config: &'a Config,
    configured: &'a std::collections::BTreeSet<String>,
) -> triad_market::registry::Rules<'a> {
    triad_market::registry::Rules {
        zones: &config.policy.zones,
        hosts: &config.policy.hosts,
        configured,
    }
}

/// The remote models of `triad.models` as read now.
async fn registry_view(
    config: &Config,
    codec: &Codec,
) -> Result<triad_market::registry::RegistryView> {
    let names = Names::new(&config.kafka);
    let records =
        triad_kafka::consume::read_all(&config.kafka, &names.models, Duration::from_secs(30))
            .await?;
    let mut view = triad_market::registry::RegistryView::default();
    for m in records {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        match m.payload() {
            None => {
                view.apply(m.offset(), &key, None);
            }
            Some(bytes) => match codec.decode::<ModelRegistration>(Some(bytes)).await {
                Ok(r) => {
                    view.apply(m.offset(), &key, Some(&r));
                }
                Err(error) => {
                    tracing::warn!(%error, offset = m.offset(), "undecodable registration skipped")
                }
            },
        }
    }
    Ok(view)
}

/// Registers the remote models of `file` (TOML or JSON): every document is checked against
/// this configuration's policy first, and nothing is written unless all pass.
pub async fn add(
    config: &Config,
    codec: Arc<Codec>,
    file: &Path,
    by: &str,
    wait_for: usize,
    timeout: Duration,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: ModelsFile = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a models file", file.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a models file", file.display()))?
    };
    if parsed.models.is_empty() {
        bail!("{}: no [models.<id>] entries", file.display());
    }
    let configured = configured_ids(config).await?;
    let rules = rules(config, &configured);
    let mut problems = Vec::new();
    let mut remotes = Vec::new();
    for (id, spec) in parsed.models {
        let remote = spec.into_remote(&id, by);
        match triad_market::registry::check(&id, &remote, rules) {
            Ok(()) => remotes.push((id, remote)),
            Err(errors) => problems.extend(
                errors
                    .0
                    .into_iter()
                    .map(|e| format!("models.{id}.{}: {}", e.field, e.message)),
            ),
        }
    }
    if !problems.is_empty() {
        bail!("nothing registered:\n  {}", problems.join("\n  "));
    }
    let names = Names::new(&config.kafka);
    let view = registry_view(config, &codec).await?;
    let status_from = high_watermark(config, &names.executor_status)?;
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    let mut written = Vec::new();
    let current = view.at(None);
    for (id, remote) in remotes {
        // A bootstrap run again writes nothing for what is already registered as stated.
        if let Some(r) = current.get(&id).filter(|r| r.remote == remote) {
            println!("unchanged {id} (version {})", r.version);
            continue;
        }
        let version = view.latest_version(&id) + 1;
        let base_url = remote.base_url.clone();
        let registration =
            triad_market::registry::registration(&id, version, remote, triad_kafka::now_micros());
        let delivered = producer
            .send_record(&codec, &names.models, None, &id, &registration)
            .await?;
        println!(
            "registered {id} version {version} ({base_url}), {}@{}",
            names.models, delivered.offset
        );
        written.push((id, version));
    }
    if wait_for > 0 {
        for (id, version) in &written {
            let r = Register {
                model: id,
                component: file,
                by_path: false,
                version: Some(*version),
                wait_for,
                timeout,
            };
            wait_for_installs(config, codec.clone(), &names, &r, *version, status_from).await?;
        }
    }
    Ok(())
}

/// Deregisters remote model `id` (a tombstone on `triad.models`).
pub async fn remove(config: &Config, codec: Arc<Codec>, id: &str) -> Result<()> {
    let view = registry_view(config, &codec).await?;
    if !view.at(None).contains_key(id) {
        bail!("{id:?} is not a registered remote model (see `triad models list`)");
    }
    let names = Names::new(&config.kafka);
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    let delivered = producer
        .send(&names.models, Some(id.as_bytes()), None, &[])
        .await?;
    println!("deregistered {id}, {}@{}", names.models, delivered.offset);
    Ok(())
}

/// Prints the registered remote models.
pub async fn list(config: &Config, codec: Arc<Codec>) -> Result<()> {
    let view = registry_view(config, &codec).await?;
    let registered = view.at(None);
    if registered.is_empty() {
        println!("no remote models registered");
    }
    let configured = configured_ids(config).await?;
    let rules = rules(config, &configured);
    for (id, r) in registered {
        let m = &r.remote;
        // Consumers with this policy leave such a record out; say so rather than hide it.
        let verdict = match triad_market::registry::check(&id, m, rules) {
            Ok(()) => String::new(),
            Err(e) => format!(" (outside this policy, not served: {e})"),
        };
        println!(
            "{id} v{}: {:?} {} model {} zones {} specialties [{}] prices {}/{} µcr per 1K p50 {} ms heartbeats {}{verdict}",
            r.version,
            m.kind,
            m.base_url,
            m.model,
            m.zones.join(","),
            m.specialties.join(","),
            m.input_micros_per_1k,
            m.output_micros_per_1k,
            m.latency_p50_ms,
            if m.heartbeat_every_ms > 0 {
                format!("every {} ms", m.heartbeat_every_ms)
            } else {
                "none (probed)".to_owned()
            }
        );
    }
    Ok(())
}

/// Sends heartbeats for registered model `id` every `every` until `cancel` (a sidecar next
/// to a model that cannot send its own), or `count` of them.
pub async fn heartbeat(
    config: &Config,
    codec: Arc<Codec>,
    id: &str,
    sender: &str,
    every: Duration,
    count: Option<u64>,
    cancel: CancellationToken,
) -> Result<()> {
    let view = registry_view(config, &codec).await?;
    let Some(registered) = view.at(None).remove(id) else {
        bail!("{id:?} is not a registered remote model (see `triad models list`)");
    };
    let names = Names::new(&config.kafka);
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    let mut tick = tokio::time::interval(every);
    let mut sent = 0u64;
    eprintln!("sending heartbeats for {id} every {} ms", every.as_millis());
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let beat = triad_domain::ModelHeartbeat {
            model_id: id.to_owned(),
            version: registered.version,
            sender: sender.to_owned(),
            sent_at: triad_kafka::now_micros(),
            schema_version: 1,
        };
        if let Err(error) = producer
            .send_record(&codec, &names.model_health, None, id, &beat)
            .await
        {
            tracing::warn!(%error, model = %id, "heartbeat not sent; the next one retries");
            continue;
        }
        sent += 1;
        if count.is_some_and(|c| sent >= c) {
            break;
        }
    }
    eprintln!("{sent} heartbeats sent");
    Ok(())
}
