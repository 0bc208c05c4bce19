//! The REST API (the subset of Confluent Schema Registry's that clients use).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::compat::Level;
use crate::state::{LogRecord, SchemaRequest, State, VersionSel};
use crate::store::Store;
use crate::{ApiError, Error, Result};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry: its state and the log it comes from.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    store: Store,
}

impl Registry {
    /// Loads the state from the log.
    pub async fn open(store: Store) -> Result<Arc<Self>> {
        let state = store.load().await?;
        Ok(Arc::new(Self {
            state: Mutex::new(state),
            store,
        }))
    }

    /// Plans a mutation on the current state, appends its records to the log and applies
    /// them. The lock is held across the append so writes are serialised: the log order is
    /// the order in which plans saw the state.
    async fn mutate<T>(
        &self,
        plan: impl FnOnce(&State) -> Result<(T, Vec<LogRecord>), ApiError>,
    ) -> Result<T, ApiError> {
        let mut state = self.state.lock().await;
        let (out, records) = plan(&state)?;
        self.store.append(&records).await?;
        records.into_iter().for_each(|r| state.apply(r));
        Ok(out)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error_code": self.code(), "message": self.to_string() });
        let mut response = (self.status(), body.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

fn reply<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => {
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(e) => ApiError::Store(e.to_string()).into_response(),
    }
}

type Params = Query<HashMap<String, String>>;
type Reg = AxState<Arc<Registry>>;

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(|| async { reply(&json!({})) }))
        .route("/schemas/types", get(|| async { reply(&["AVRO"]) }))
        .route(
            "/mode",
            get(|| async { reply(&json!({"mode": "READWRITE"})) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_config).put(put_config).delete(delete_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compat_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compat_version),
        )
        .with_state(registry)
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse()
        .map_err(|_| ApiError::SchemaNotFound(id.to_owned()))
}

async fn schema_by_id(AxState(r): Reg, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = r.state.lock().await.schema_by_id(parse_id(&id)?)?;
    let mut out = json!({ "schema": v.schema });
    if let Some(t) = v.schema_type {
        out["schemaType"] = json!(t);
    }
    if !v.references.is_empty() {
        out["references"] = json!(v.references);
    }
    Ok(reply(&out))
}

async fn raw_schema_by_id(AxState(r): Reg, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = r.state.lock().await.schema_by_id(parse_id(&id)?)?;
    Ok(raw(v.schema))
}

fn raw(schema: String) -> Response {
    let mut response = schema.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

async fn versions_of_id(AxState(r): Reg, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let state = r.state.lock().await;
    state.schema_by_id(id)?;
    let list: Vec<_> = state
        .versions_of_id(id)
        .into_iter()
        .map(|(s, v)| json!({"subject": s, "version": v}))
        .collect();
    Ok(reply(&list))
}

async fn subjects(AxState(r): Reg, Query(p): Params) -> Response {
    reply(&r.state.lock().await.subjects(flag(&p, "deleted")))
}

async fn versions(
    AxState(r): Reg,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    Ok(reply(
        &r.state
            .lock()
            .await
            .version_numbers(&subject, flag(&p, "deleted"))?,
    ))
}

async fn register(
    AxState(r): Reg,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: SchemaRequest = body(&bytes)?;
    let id = r.mutate(|s| s.plan_register(&subject, &req)).await?;
    tracing::info!(subject = %subject, id, "schema registered");
    Ok(reply(&json!({ "id": id })))
}

async fn lookup(
    AxState(r): Reg,
    Path(subject): Path<String>,
    Query(p): Params,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: SchemaRequest = body(&bytes)?;
    Ok(reply(&r.state.lock().await.lookup(
        &subject,
        &req,
        flag(&p, "deleted"),
    )?))
}

async fn version(
    AxState(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let sel = VersionSel::parse(&version)?;
    Ok(reply(&r.state.lock().await.version(
        &subject,
        sel,
        flag(&p, "deleted"),
    )?))
}

async fn raw_version(
    AxState(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let sel = VersionSel::parse(&version)?;
    Ok(raw(r
        .state
        .lock()
        .await
        .version(&subject, sel, flag(&p, "deleted"))?
        .schema))
}

async fn referenced_by(
    AxState(r): Reg,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let sel = VersionSel::parse(&version)?;
    let state = r.state.lock().await;
    let v = state.version(&subject, sel, false)?;
    Ok(reply(&state.referenced_by(&subject, v.version)))
}

async fn delete_subject(
    AxState(r): Reg,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let permanent = flag(&p, "permanent");
    let versions = r
        .mutate(|s| s.plan_delete_subject(&subject, permanent))
        .await?;
    tracing::info!(subject = %subject, permanent, "subject deleted");
    Ok(reply(&versions))
}

async fn delete_version(
    AxState(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let sel = VersionSel::parse(&version)?;
    let permanent = flag(&p, "permanent");
    let n = r
        .mutate(|s| s.plan_delete_version(&subject, sel, permanent))
        .await?;
    Ok(reply(&n))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigUpdate {
    compatibility: String,
}

async fn get_global_config(AxState(r): Reg) -> Response {
    reply(&json!({ "compatibilityLevel": r.state.lock().await.global_level().as_str() }))
}

async fn put_global_config(AxState(r): Reg, bytes: Bytes) -> Result<Response, ApiError> {
    let update: ConfigUpdate = body(&bytes)?;
    let level = Level::parse(&update.compatibility)?;
    r.mutate(|_| {
        Ok((
            (),
            vec![LogRecord::Config {
                subject: None,
                level,
            }],
        ))
    })
    .await?;
    Ok(reply(&json!({ "compatibility": level.as_str() })))
}

async fn get_config(
    AxState(r): Reg,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let state = r.state.lock().await;
    let level = match state.subject_level(&subject) {
        Some(level) => level,
        None if flag(&p, "defaultToGlobal") => state.global_level(),
        None => return Err(ApiError::SubjectCompatibilityNotConfigured(subject)),
    };
    Ok(reply(&json!({ "compatibilityLevel": level.as_str() })))
}

async fn put_config(
    AxState(r): Reg,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let update: ConfigUpdate = body(&bytes)?;
    let level = Level::parse(&update.compatibility)?;
    r.mutate(|_| {
        Ok((
            (),
            vec![LogRecord::Config {
                subject: Some(subject.clone()),
                level,
            }],
        ))
    })
    .await?;
    Ok(reply(&json!({ "compatibility": level.as_str() })))
}

async fn delete_config(AxState(r): Reg, Path(subject): Path<String>) -> Result<Response, ApiError> {
    let previous = r
        .mutate(|s| {
            let previous = s
                .subject_level(&subject)
                .ok_or_else(|| ApiError::SubjectCompatibilityNotConfigured(subject.clone()))?;
            Ok((
                previous,
                vec![LogRecord::ConfigTombstone {
                    subject: Some(subject.clone()),
                }],
            ))
        })
        .await?;
    Ok(reply(&json!({ "compatibilityLevel": previous.as_str() })))
}

fn compat_reply(problems: Vec<String>, verbose: bool) -> Response {
    let mut out = json!({ "is_compatible": problems.is_empty() });
    if verbose {
        out["messages"] = json!(problems);
    }
    reply(&out)
}

async fn compat_all(
    AxState(r): Reg,
    Path(subject): Path<String>,
    Query(p): Params,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: SchemaRequest = body(&bytes)?;
    let problems = r
        .state
        .lock()
        .await
        .check_compatibility(&subject, None, &req)?;
    Ok(compat_reply(problems, flag(&p, "verbose")))
}

async fn compat_version(
    AxState(r): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let sel = VersionSel::parse(&version)?;
    let req: SchemaRequest = body(&bytes)?;
    let problems = r
        .state
        .lock()
        .await
        .check_compatibility(&subject, Some(sel), &req)?;
    Ok(compat_reply(problems, flag(&p, "verbose")))
}

/// Options of `triad registry`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub kafka: triad_config::KafkaConfig,
    pub topic: String,
}

/// Loads the state from the topic, then serves on `listener` until `cancel`.
pub async fn serve(
    options: &ServeOptions,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<()> {
    let store = Store::open(&options.kafka, &options.topic).await?;
    let registry = Registry::open(store).await?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%addr, topic = %options.topic, "schema registry listening");
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(Error::Serve)
}
