//! The seed's REST/SSE API over TRIAD's log and read models.
//!
//! Writes are commands: `POST /v1/workflows` validates the document at the edge (every error
//! names its field), appends `SubmitWorkflow` to the inbox with `acks=all` and answers 202 —
//! acceptance or rejection arrive later as events. Reads come from the PostgreSQL read models
//! (`triad-projection`). The SSE stream serves a workflow's backlog from the timeline and
//! then follows it live: one `LISTEN triad_read_model` connection per process wakes every
//! stream, which re-reads from its last sequence number, so nothing is skipped or repeated,
//! and a client resumes with `Last-Event-ID`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;

pub mod access;
pub mod audit;
pub mod commands;
pub mod credits;
pub mod graphql;
pub mod keys;
pub mod limits;
pub mod long;
pub mod market;
pub mod metrics;
pub mod read;
pub mod registry;
mod rest;
pub mod shared;
pub mod stream;
pub mod trusted;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL: {}", .0.as_db_error().map_or_else(|| .0.to_string(), ToString::to_string))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the read models are unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error("Kafka: {0}")]
    Rdkafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] triad_kernel::Error),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub kafka: KafkaConfig,
    pub names: Names,
    pub codec: Arc<Codec>,
    pub producer: Producer,
    /// Read-model connections (`search_path` = the live schema).
    pub pool: deadpool_postgres::Pool,
    /// Validation of submitted documents, as the processor will see them.
    pub policy: triad_workflow::aggregate::Policy,
    pub registry_url: String,
    /// Ticks whenever the read models changed (one per projection batch).
    pub changes: broadcast::Sender<()>,
    /// Timeline reads shared by the streams of the same workflow.
    pub hub: stream::EventHub,
    pub http: reqwest::Client,
    /// Ends the live streams at shutdown (a server waits for open connections).
    pub shutdown: CancellationToken,
    pub metrics: Arc<metrics::ApiMetrics>,
    /// This API node's sovereignty kernel when payloads are sealed: it seals submitted
    /// prompts and opens outputs sealed to its zone.
    pub kernel: Option<Arc<triad_kernel::NodeKernel>>,
    /// The credits ledger as followed from `triad.credits` (filled by [`serve`]).
    pub ledger: credits::Ledger,
    /// Each model's health and breaker state as the executors report them (filled by
    /// [`serve`]).
    pub health: market::HealthView,
    /// The model registry as followed from `triad.models` (filled by [`serve`]).
    pub registry: registry::ModelRegistry,
    /// Who may call: API keys as followed from `triad.api-keys` (filled by [`serve`]) and
    /// the JWT verifier.
    pub identity: access::Identity,
    /// Per-tenant request rate and active-work limits.
    pub limits: limits::Limits,
    /// When set, GraphQL runs only these registered operations (production mode).
    pub trusted_operations: Option<trusted::TrustedOperations>,
}

impl AppState {
    /// One workflow from the read model if `scope` (the caller's tenant; none for an
    /// operator) sees it, its sealed outputs opened where this node may. Another tenant's
    /// workflow reads exactly as a missing one.
    pub async fn workflow(
        &self,
        id: &str,
        scope: Option<&str>,
    ) -> Result<Option<read::WorkflowView>> {
        let mut view = read::workflow(&self.pool, id)
            .await?
            .filter(|w| w.visible_to(scope));
        if let Some(v) = &mut view {
            self.reveal(v);
        }
        Ok(view)
    }

    /// Opens the sealed outputs of `view` that this node may open (its zone is one of the
    /// output's); the others stay without `output`, with `sealed_to` saying where they open.
    pub fn reveal(&self, view: &mut read::WorkflowView) {
        for task in &mut view.tasks {
            let Some(sealed) = task.sealed.take() else {
                continue;
            };
            let Some(kernel) = &self.kernel else {
                continue;
            };
            let expect = triad_sovereignty::Expect {
                workflow_id: &view.workflow_id,
                task_id: &task.task_id,
                role: triad_sovereignty::Role::Output,
            };
            match kernel.kernel().open(&sealed, expect) {
                Ok(opened) => task.output = String::from_utf8(opened.bytes().to_vec()).ok(),
                Err(error) => tracing::debug!(
                    workflow.id = %view.workflow_id,
                    task.id = %task.task_id,
                    %error,
                    "a sealed output stays closed here"
                ),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: std::net::SocketAddr,
    pub max_body_bytes: usize,
    /// `postgres.url` and password, for the LISTEN connection.
    pub postgres_url: String,
    pub postgres_password: Option<String>,
}

/// An RFC 9457 problem (`application/problem+json`); `code` is stable, for programs.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: String,
    pub detail: Option<String>,
    pub errors: Vec<serde_json::Value>,
    /// `Retry-After` in seconds (429 answers).
    pub retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, title: impl Into<String>) -> Self {
        Self {
            status,
            code,
            title: title.into(),
            detail: None,
            errors: Vec::new(),
            retry_after_s: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        tracing::warn!(error = %e, "request failed");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a backing service is unavailable",
        )
        .detail(e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://triad.dev/problems/{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "code": self.code,
        });
        if let Some(d) = self.detail {
            body["detail"] = json!(d);
        }
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

/// Every REST route as (method, path); `docs/openapi.json` must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/workflows"),
    ("get", "/v1/workflows/{id}"),
    ("get", "/v1/workflows/{id}/events"),
    ("post", "/v1/workflows/{id}/cancel"),
    ("get", "/v1/health"),
    ("get", "/metrics"),
    ("post", "/v1/estimate"),
    ("get", "/v1/accounts/{id}"),
    ("post", "/v1/accounts/{id}/credits"),
    ("post", "/v1/accounts/{id}/transfers"),
    ("get", "/v1/credits/supply"),
    ("get", "/v1/models"),
    ("post", "/v1/models"),
    ("delete", "/v1/models/{id}"),
    ("post", "/v1/models/{id}/heartbeat"),
    ("get", "/v1/api-keys"),
    ("post", "/v1/api-keys"),
    ("post", "/v1/api-keys/{id}/rotate"),
    ("post", "/v1/api-keys/{id}/revoke"),
];

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let schema = graphql::schema(state.clone());
    let gql = Router::new()
        .route("/graphql", get(graphql::graphiql).post(graphql::execute))
        .with_state(schema.clone());
    // The WebSocket authenticates in its `connection_init` payload (browsers cannot set
    // headers on a WebSocket), so it is outside the HTTP credential layer.
    let gql_ws = Router::new()
        .route("/graphql/ws", get(graphql::subscriptions))
        .with_state((
            shared::Shared::new(schema, graphql::REPLAYABLE, state.metrics.clone()),
            state.clone(),
        ));
    // Same order as ROUTES; everything here needs credentials.
    let protected = Router::new()
        .merge(gql)
        .route(ROUTES[0].1, post(rest::submit))
        .route(ROUTES[1].1, get(rest::get_workflow))
        .route(ROUTES[2].1, get(rest::events))
        .route(ROUTES[3].1, post(rest::cancel))
        .route(ROUTES[6].1, post(rest::estimate))
        .route(ROUTES[7].1, get(rest::account))
        .route(ROUTES[8].1, post(rest::issue_credits))
        .route(ROUTES[9].1, post(rest::transfer))
        .route(ROUTES[10].1, get(rest::supply))
        .route(ROUTES[11].1, get(rest::models).post(rest::register_model))
        .route(ROUTES[13].1, delete(rest::deregister_model))
        .route(ROUTES[14].1, post(rest::model_heartbeat))
        .route(ROUTES[15].1, get(rest::api_keys).post(rest::create_api_key))
        .route(ROUTES[17].1, post(rest::rotate_api_key))
        .route(ROUTES[18].1, post(rest::revoke_api_key))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::require,
        ));
    // Anonymous: health (for load balancers) and, below, the metrics.
    Router::new()
        .merge(protected)
        .merge(gql_ws)
        .route(ROUTES[4].1, get(rest::health))
        .fallback(rest::not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::count,
        ))
        .route(
            ROUTES[5].1,
            get(metrics::serve).with_state(state.metrics.clone()),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Follows `NOTIFY triad_read_model` on a connection of its own and ticks `changes`;
/// reconnects with backoff. A tick is also sent after every (re)connect, since
/// notifications sent while disconnected are lost: streams re-read and lose nothing.
pub async fn listen_changes(
    url: String,
    password: Option<String>,
    changes: broadcast::Sender<()>,
    cancel: CancellationToken,
) {
    let mut wait = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        match listen_once(&url, password.as_deref(), &changes, &cancel).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "read-model notifications lost; reconnecting");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn listen_once(
    url: &str,
    password: Option<&str>,
    changes: &broadcast::Sender<()>,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::Unavailable(e.to_string()))?;
    if let Some(p) = password {
        config.password(p);
    }
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = futures::StreamExt::next(&mut messages).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if tx.send(Ok(())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    client.batch_execute("LISTEN triad_read_model").await?;
    let _ = changes.send(());
    let result = loop {
        tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            m = rx.recv() => match m {
                Some(Ok(())) => { let _ = changes.send(()); }
                Some(Err(e)) => break Err(e.into()),
                None => break Err(Error::Unavailable("the LISTEN connection closed".into())),
            }
        }
    };
    driver.abort();
    result
}

/// Reads every partition of `topic` (`partitions` of them) from offset 0 and then follows
/// it, handing each record to `each`, until `cancel`. Read errors are logged and the read goes
/// on (librdkafka reconnects). The API's in-memory views (the credits ledger, model health)
/// are built this way: from the log, never from a database.
pub(crate) async fn follow_topic<F, Fut>(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    cancel: CancellationToken,
    mut each: F,
) where
    F: FnMut(rdkafka::message::OwnedMessage) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    use rdkafka::consumer::Consumer;
    let assigned = (|| {
        let consumer: rdkafka::consumer::StreamConsumer =
            triad_kafka::client::follower_config(kafka).create()?;
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok::<_, rdkafka::error::KafkaError>(consumer)
    })();
    let consumer = match assigned {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, messaging.destination.name = %topic, "cannot follow the topic; its view stays empty");
            return;
        }
    };
    let mut stream = consumer.stream();
    // A missing topic or a broker away makes every poll fail at once: back off, so the log
    // gets a line per attempt rather than a tight loop of them.
    const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
    let mut backoff = FIRST_RETRY;
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            m = stream.next() => m,
        };
        match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, messaging.destination.name = %topic, retry_in = ?backoff, "reading failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Some(Ok(m)) => {
                backoff = FIRST_RETRY;
                each(m.detach()).await;
            }
        }
    }
}

/// Serves the API on `options.listen` until `cancel`.
pub async fn serve(
    state: Arc<AppState>,
    options: &Options,
    cancel: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: options.listen,
            source,
        })?;
    tracing::info!(server.address = %options.listen, "API listening");
    let notifier = tokio::spawn(listen_changes(
        options.postgres_url.clone(),
        options.postgres_password.clone(),
        state.changes.clone(),
        cancel.clone(),
    ));
    let follower = tokio::spawn(credits::follow(state.clone(), cancel.clone()));
    let status = tokio::spawn(market::follow_status(state.clone(), cancel.clone()));
    let models = tokio::spawn(registry::follow(state.clone(), cancel.clone()));
    state.identity.attach(&state.kafka, &state.names.api_keys);
    let keys = tokio::spawn(access::follow(state.clone(), cancel.clone()));
    let sweeper = tokio::spawn(limits::sweep(state.clone(), cancel.clone()));
    // A key revoked before this node started must not work on it for an instant.
    state.identity.catch_up().await;
    let app = router(state, options.max_body_bytes);
    let c = cancel.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { c.cancelled().await })
        .await
        .map_err(Error::Serve);
    cancel.cancel();
    let _ = notifier.await;
    let _ = follower.await;
    let _ = status.await;
    let _ = models.await;
    let _ = keys.await;
    let _ = sweeper.await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_json_lists_exactly_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (m.clone(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn the_api_reference_names_every_route() {
        let reference = include_str!("../../../docs/api_reference.md");
        for (method, path) in ROUTES {
            let line = format!("{} {path}", method.to_uppercase());
            assert!(reference.contains(&line), "{line}");
        }
    }
}
