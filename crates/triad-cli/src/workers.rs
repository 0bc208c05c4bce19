//! Running the processor and executors, alone (`triad process`, `triad execute`) or all in
//! one process (`triad dev`, `triad demo`).

use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::Config;
use triad_models::Catalogue;

/// The configured models, WebAssembly ones loaded into this process's wasmtime host.
pub async fn catalogue(config: &Config) -> Result<Catalogue> {
    Ok(triad_wasm::load_catalogue(&config.models, |v| std::env::var(v).ok(), wasm_host()?).await?)
}

/// What each model of the catalogue offers, for validating workflows at submission.
pub fn offers(catalogue: &Catalogue) -> Vec<triad_workflow::ModelOffer> {
    catalogue
        .models
        .values()
        .map(|m| {
            let f = m.capabilities();
            triad_workflow::ModelOffer {
                id: f.id.clone(),
                zones: f.zones.clone(),
                specialties: f.specialties.clone(),
                input_micros_per_1k: f.input_micros_per_1k,
                output_micros_per_1k: f.output_micros_per_1k,
                max_context: f.max_context,
                latency_p50_ms: f.latency_p50_ms,
                latency_p95_ms: f.latency_p95_ms,
            }
        })
        .collect()
}

/// One wasmtime engine per process (its pooling allocator reserves the instance slots).
pub fn wasm_host() -> Result<&'static triad_wasm::WasmHost> {
    static HOST: std::sync::OnceLock<triad_wasm::WasmHost> = std::sync::OnceLock::new();
    if let Some(h) = HOST.get() {
        return Ok(h);
    }
    let host = triad_wasm::WasmHost::new(triad_wasm::HostConfig::default())?;
    Ok(HOST.get_or_init(|| host))
}

/// The processor's options; with `sovereignty.seal` it signs each terminal event's root with
/// the signing key of node `processor` (or `sovereignty.node_id`).
pub fn processor_options(
    config: &Config,
    catalogue: &Catalogue,
    instance: u32,
) -> Result<triad_processor::Options> {
    let signer =
        signer(config, "processor", "")?.map(|signer| triad_processor::custody::RootSigner {
            node_id: node_id(config, "processor", ""),
            signer,
        });
    let offers = offers(catalogue);
    Ok(triad_processor::Options {
        kafka: config.kafka.clone(),
        policy: triad_processor::policy_from(&config.policy, &config.credits, &offers),
        timing: config.processor.clone(),
        instance,
        signer,
        policy_document: triad_processor::policy_document(&config.policy, &offers),
        zone_hosts: config.policy.hosts.clone(),
    })
}

/// The notary's options with `sovereignty.seal` (None otherwise): it signs with node
/// `notary`'s (or `sovereignty.node_id`'s) signing key.
pub fn notary_options(config: &Config) -> Result<Option<triad_kernel::notary::Options>> {
    Ok(
        signer(config, "notary", "")?.map(|signer| triad_kernel::notary::Options {
            kafka: config.kafka.clone(),
            node_id: node_id(config, "notary", ""),
            signer,
            every: config.sovereignty.checkpoint_every,
            idle: std::time::Duration::from_millis(config.sovereignty.checkpoint_idle_ms),
        }),
    )
}

pub fn executor_options(
    config: &Config,
    zone: &str,
    instance: u32,
) -> Result<triad_executor::Options> {
    Ok(triad_executor::Options {
        kafka: config.kafka.clone(),
        zone: zone.to_owned(),
        instance,
        config: config.executor.clone(),
        blobs: Some(blob_store(config)?),
        inline_max_bytes: config.blobs.inline_max_bytes,
        metrics: metrics(),
        kernel: None,
        zone_hosts: Arc::new(config.policy.hosts.clone()),
        signer: None,
    })
}

/// This node's id in the key directory: `sovereignty.node_id`, else `<role>-<zone>`.
pub fn node_id(config: &Config, role: &str, zone: &str) -> String {
    config.sovereignty.node_id.clone().unwrap_or_else(|| {
        if zone.is_empty() {
            role.to_owned()
        } else {
            format!("{role}-{zone}")
        }
    })
}

/// This node's signing key when `sovereignty.seal` is on: inside the TPM with
/// `sovereignty.tpm_tcti`, else the file store's `<node>.sign`. Executors sign their
/// execution records with it, the processor its roots and policies, the notary checkpoints.
pub fn signer(
    config: &Config,
    role: &str,
    zone: &str,
) -> Result<Option<Arc<dyn triad_sovereignty::signing::Signer>>> {
    if !config.sovereignty.seal {
        return Ok(None);
    }
    if let Some(tcti) = &config.sovereignty.tpm_tcti {
        return Ok(Some(Arc::new(tpm_key(tcti)?.signer())));
    }
    let store = triad_sovereignty::FileKeyStore::new(&config.sovereignty.key_dir);
    Ok(Some(Arc::new(
        store.load_or_create_signer(&node_id(config, role, zone))?,
    )))
}

/// The TPM's node key, opened once per process: a TPM simulator serves one connection at a
/// time, so the kernel's unwrapping and the signer share this one.
fn tpm_key(tcti: &str) -> Result<Arc<triad_sovereignty::TpmKey>> {
    static OPEN: std::sync::Mutex<Vec<(String, Arc<triad_sovereignty::TpmKey>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut open = OPEN
        .lock()
        .map_err(|_| anyhow::anyhow!("the TPM registry is poisoned"))?;
    if let Some((_, key)) = open.iter().find(|(t, _)| t == tcti) {
        return Ok(key.clone());
    }
    let key = Arc::new(triad_sovereignty::TpmKey::open(
        tcti,
        triad_sovereignty::tpm::DEFAULT_HANDLE,
    )?);
    open.push((tcti.to_owned(), key.clone()));
    Ok(key)
}

/// This node's sovereignty kernel when `sovereignty.seal` is on (None otherwise): its key
/// from the TPM (`sovereignty.tpm_tcti`) or the file store, following the key directory and
/// the workflow keys. An executor must be enrolled in its zone (`must_be_enrolled`): one
/// that is not could open nothing, so it refuses to start and says how to enrol it.
pub async fn kernel(
    config: &Config,
    codec: Arc<Codec>,
    role: &str,
    zone: &str,
    must_be_enrolled: bool,
    cancel: &CancellationToken,
) -> Result<Option<Arc<triad_kernel::NodeKernel>>> {
    use anyhow::Context as _;
    use triad_sovereignty::NodeKey;
    let s = &config.sovereignty;
    if !s.seal {
        return Ok(None);
    }
    let node_id = node_id(config, role, zone);
    let key: Arc<dyn NodeKey> = match &s.tpm_tcti {
        Some(tcti) => tpm_key(tcti)?,
        None => {
            Arc::new(triad_sovereignty::FileKeyStore::new(&s.key_dir).load_or_create(&node_id)?)
        }
    };
    let operator =
        triad_sovereignty::parse_public_hex(s.operator_public_key.as_deref().unwrap_or(""))
            .context("sovereignty.operator_public_key is not a P-256 public key in hex")?;
    let key_id = key.key_id().to_owned();
    let public = triad_sovereignty::public_hex(key.public());
    let kernel = triad_sovereignty::Kernel::new(&node_id, zone, key);
    let node = triad_kernel::NodeKernel::start(
        &config.kafka,
        codec,
        operator,
        kernel,
        cancel.child_token(),
    )
    .await?;
    let enrolled = node
        .kernel()
        .directory()
        .get(&key_id)
        .is_some_and(|e| e.zone == zone && e.state == triad_sovereignty::KeyState::Active);
    if !enrolled {
        let how = format!(
            "node {node_id} (key {key_id}) is not enrolled in zone {zone}; the operator enrols it with              `triad keys enrol --node {node_id} --zone {zone} --public-key {public} --operator-key FILE`"
        );
        if must_be_enrolled {
            anyhow::bail!(how);
        }
        tracing::warn!(node.id = %node_id, zone, key.id = %key_id, "{how}; sealed outputs cannot be read here");
    }
    Ok(Some(node))
}

/// The executors' counters, one set per process.
pub fn metrics() -> Arc<triad_executor::metrics::Metrics> {
    static METRICS: std::sync::OnceLock<Arc<triad_executor::metrics::Metrics>> =
        std::sync::OnceLock::new();
    METRICS.get_or_init(Arc::default).clone()
}

/// Serves `GET /metrics` on `metrics.listen` until `cancel`, when configured.
pub async fn serve_metrics(config: &Config, cancel: CancellationToken) -> Result<()> {
    let Some(addr) = config.metrics.listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("configuration key metrics.listen: cannot bind {addr}: {e}")
    })?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics().render(),
            )
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "the metrics server stopped");
        }
    });
    Ok(())
}

/// The claim check's store in PostgreSQL (connects on first use). The password, if any, comes
/// from `PGPASSWORD`, never from configuration files.
pub fn blob_store(config: &Config) -> Result<Arc<dyn triad_store::BlobStore>> {
    let password = std::env::var("PGPASSWORD").ok();
    Ok(Arc::new(triad_store::PgBlobStore::new(
        &config.postgres.url,
        password.as_deref(),
        config.postgres.pool_size,
    )?))
}

/// A pool on `postgres.url`; the password, if any, from `PGPASSWORD`.
pub fn pg_pool(config: &Config) -> Result<deadpool_postgres::Pool> {
    let password = std::env::var("PGPASSWORD").ok();
    Ok(triad_store::pool(
        &config.postgres.url,
        password.as_deref(),
        config.postgres.pool_size,
    )?)
}

/// The API's shared state and options.
pub async fn api(
    config: &Config,
    codec: Arc<Codec>,
    cancel: &CancellationToken,
) -> Result<(Arc<triad_api::AppState>, triad_api::Options)> {
    let catalogue = catalogue(config).await?;
    let password = std::env::var("PGPASSWORD").ok();
    let pool = triad_store::pool_in_schema(
        &config.postgres.url,
        password.as_deref(),
        config.postgres.pool_size,
        Some(&config.projection.schema),
    )?;
    let zone = config.sovereignty.zone.clone().unwrap_or_default();
    let kernel = kernel(config, Arc::clone(&codec), "edge", &zone, false, cancel).await?;
    let state = triad_api::AppState {
        kafka: config.kafka.clone(),
        names: triad_kafka::topics::Names::new(&config.kafka),
        codec,
        producer: triad_kafka::produce::Producer::new(&config.kafka)?,
        pool,
        policy: triad_processor::policy_from(
            &config.policy,
            &config.credits,
            &crate::workers::offers(&catalogue),
        ),
        registry_url: config.registry.url.clone(),
        changes: tokio::sync::broadcast::channel(64).0,
        hub: triad_api::stream::EventHub::default(),
        http: reqwest::Client::new(),
        shutdown: cancel.clone(),
        metrics: Arc::default(),
        kernel,
        ledger: triad_api::credits::Ledger::default(),
        health: triad_api::market::HealthView::default(),
        registry: triad_api::registry::ModelRegistry::new(config.policy.hosts.clone()),
        identity: triad_api::access::Identity::new(jwt_verifier(config)?),
        limits: triad_api::limits::Limits::new(&config.api.limits),
        trusted_operations: trusted_operations(config)?,
    };
    let options = triad_api::Options {
        listen: config.api.listen,
        max_body_bytes: config.api.max_body_bytes,
        postgres_url: config.postgres.url.clone(),
        postgres_password: password,
    };
    Ok((Arc::new(state), options))
}

/// The registered GraphQL operations of `api.trusted_operations_file`, when configured.
fn trusted_operations(config: &Config) -> Result<Option<triad_api::trusted::TrustedOperations>> {
    use anyhow::Context as _;
    let Some(path) = &config.api.trusted_operations_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("api.trusted_operations_file: reading {}", path.display()))?;
    let trusted = triad_api::trusted::TrustedOperations::from_json(&text)?;
    tracing::info!(
        operations = trusted.len(),
        "GraphQL runs only trusted operations"
    );
    Ok(Some(trusted))
}

/// The JWT verifier of `api.jwt`, when configured: the JWKS file read once at start.
fn jwt_verifier(config: &Config) -> Result<Option<triad_auth::jwt::JwtVerifier>> {
    let Some(jwt) = &config.api.jwt else {
        return Ok(None);
    };
    use anyhow::Context as _;
    let jwks = std::fs::read_to_string(&jwt.jwks_file)
        .with_context(|| format!("api.jwt.jwks_file: reading {}", jwt.jwks_file.display()))?;
    let algorithms = jwt
        .algorithms
        .iter()
        .map(|a| triad_auth::jwt::allowed_algorithm(a))
        .collect::<Result<Vec<_>, _>>()?;
    let rules = triad_auth::jwt::JwtRules {
        issuer: jwt.issuer.clone(),
        audience: jwt.audience.clone(),
        algorithms,
        leeway_s: jwt.leeway_s,
        tenant_claim: jwt.tenant_claim.clone(),
        role_claim: jwt.role_claim.clone(),
    };
    let verifier = triad_auth::jwt::JwtVerifier::new(rules, &jwks)
        .with_context(|| format!("api.jwt.jwks_file: {}", jwt.jwks_file.display()))?;
    Ok(Some(verifier))
}

/// The projection worker's options and pool.
pub fn projection(config: &Config) -> Result<(triad_projection::Options, deadpool_postgres::Pool)> {
    let names = triad_kafka::topics::Names::new(&config.kafka);
    let options = triad_projection::Options {
        kafka: config.kafka.clone(),
        topic: names.events.clone(),
        dlq_topic: names.dlq.clone(),
        schema: config.projection.schema.clone(),
        batch_max_records: config.projection.batch_max_records,
        flush_interval: std::time::Duration::from_millis(config.projection.flush_interval_ms),
    };
    Ok((options, pg_pool(config)?))
}

/// `triad replay`: rebuilds with a progress line on stderr, then reports what it compared.
pub async fn replay(config: &Config, codec: Arc<Codec>, name: &str, verify: bool) -> Result<()> {
    let (options, pool) = projection(config)?;
    eprintln!(
        "replay {name}: building {}_shadow from offset 0 of {}",
        options.schema, options.topic
    );
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |p: triad_projection::Progress| {
        let Ok(mut last) = last.lock() else { return };
        if last.elapsed() >= std::time::Duration::from_secs(1) || p.done >= p.total {
            *last = std::time::Instant::now();
            let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
            eprintln!("replay {name}: {} / {} records ({pct}%)", p.done, p.total);
        }
    };
    let report = triad_projection::replay(&options, pool, codec, name, verify, &progress).await?;
    for (table, hash) in &report.verified {
        println!("verified {table}: {hash} (live = rebuilt)");
    }
    println!(
        "replay {name}: {} records, {} events applied, {} duplicates skipped, {} dead-lettered; swapped into {}",
        report.records,
        report.applied.events,
        report.applied.duplicates,
        report.applied.dead_lettered,
        options.schema
    );
    Ok(())
}

/// Starts the processor, the credits ledger and one executor per zone of the policy as tasks
/// of this process.
pub async fn spawn_all(
    config: &Config,
    codec: Arc<Codec>,
    cancel: &CancellationToken,
) -> Result<JoinSet<Result<()>>> {
    let catalogue = catalogue(config).await?;
    let mut set = JoinSet::new();
    let options = processor_options(config, &catalogue, 0)?;
    let (c, t) = (codec.clone(), cancel.clone());
    set.spawn(async move { Ok(triad_processor::run(&options, c, t).await?) });
    let ledger = triad_processor::ledger::Options {
        kafka: config.kafka.clone(),
        instance: 0,
    };
    let (c, t) = (codec.clone(), cancel.clone());
    set.spawn(async move { Ok(triad_processor::ledger::run(&ledger, c, t).await?) });
    if let Some(options) = notary_options(config)? {
        let (c, t) = (codec.clone(), cancel.clone());
        set.spawn(async move { Ok(triad_kernel::notary::run(&options, c, t).await?) });
    }
    for zone in &config.policy.zones {
        let mut options = executor_options(config, zone, 0)?;
        options.kernel = kernel(config, codec.clone(), "executor", zone, true, cancel).await?;
        options.signer = signer(config, "executor", zone)?;
        let zones = config.policy.zones.clone();
        let (c, t, cat) = (codec.clone(), cancel.clone(), catalogue.clone());
        set.spawn(async move { Ok(triad_executor::run(&options, c, cat, &zones, t).await?) });
    }
    Ok(set)
}

/// Waits for every worker; the first error is returned after all stopped.
pub async fn join(mut set: JoinSet<Result<()>>) -> Result<()> {
    let mut first = None;
    while let Some(joined) = set.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result
            && first.is_none()
        {
            first = Some(e);
        }
    }
    first.map_or(Ok(()), Err)
}
