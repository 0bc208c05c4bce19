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
        schema_version: 1,
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
