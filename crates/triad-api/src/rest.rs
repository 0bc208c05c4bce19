//! The REST/SSE handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;
use serde_json::json;
use triad_workflow::Workflow;

use crate::access::{owns_account, require_role, scope};
use crate::commands::{self, CommandError};
use crate::stream::EventStream;
use crate::{AppState, Problem};
use triad_auth::Principal;
use triad_domain::AccessRole;

type Reply = Result<Response, Problem>;

fn workflow_urls(id: &str) -> serde_json::Value {
    json!({
        "workflow_url": format!("/v1/workflows/{id}"),
        "stream_url": format!("/v1/workflows/{id}/events"),
        "cancel_url": format!("/v1/workflows/{id}/cancel"),
    })
}

fn parse_document(headers: &HeaderMap, body: &[u8]) -> Result<Workflow, Problem> {
    let text = std::str::from_utf8(body).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_document",
            "the body is not UTF-8 text",
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let parsed = if content_type.contains("yaml") {
        Workflow::from_yaml(text).map_err(|e| e.to_string())
    } else if content_type.contains("json") {
        Workflow::from_json(text).map_err(|e| e.to_string())
    } else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the workflow as application/json or application/yaml",
        ));
    };
    parsed.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_document",
            "the body is not a workflow document",
        )
        .detail(e)
    })
}

fn command_problem(e: CommandError) -> Problem {
    match e {
        CommandError::BadKey => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "the Idempotency-Key header is invalid",
        )
        .detail(e.to_string()),
        CommandError::Invalid(errors) => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_workflow",
                "the workflow is invalid",
            )
            .detail(errors.to_string());
            p.errors = errors
                .0
                .iter()
                .map(|e| json!({"field": e.field, "message": e.message}))
                .collect();
            p
        }
        CommandError::Finished(status) => Problem::new(
            StatusCode::CONFLICT,
            "workflow_finished",
            "the workflow has already finished",
        )
        .detail(format!("it is {status}")),
        CommandError::ForeignAccount(reason) => {
            let mut p = Problem::new(
                StatusCode::FORBIDDEN,
                "foreign_account",
                "the account belongs to another tenant",
            )
            .detail(reason.clone());
            p.errors = vec![json!({"field": "account", "message": reason})];
            p
        }
        CommandError::NotFound(id) => not_found_workflow(&id),
        CommandError::Limited(exceeded) => exceeded.problem(),
        CommandError::Unavailable(e) => Problem::from(e),
    }
}

/// `POST /v1/workflows`: validate, append `SubmitWorkflow` (acks=all), 202.
pub async fn submit(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| command_problem(CommandError::BadKey))?
                .to_owned(),
        ),
    };
    let workflow = parse_document(&headers, &body)?;
    let workflow_id = commands::submit(&s, &workflow, key, &who)
        .await
        .map_err(command_problem)?;
    let mut body = workflow_urls(&workflow_id);
    body["workflow_id"] = json!(workflow_id);
    body["status"] = json!("SUBMITTED");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /v1/estimate`: validate the document and estimate its cost; nothing is written.
pub async fn estimate(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Reply {
    let workflow = parse_document(&headers, &body)?;
    let estimate = commands::estimate(&s, &workflow).map_err(command_problem)?;
    Ok((StatusCode::OK, Json(estimate)).into_response())
}

fn not_found_workflow(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "workflow_not_found",
        "no such workflow",
    )
    .detail(format!(
        "{id} is not in the read model (a workflow submitted a moment ago appears once its \
         first event is projected)"
    ))
}

/// `GET /v1/workflows/{id}` (another tenant's workflow reads as absent).
pub async fn get_workflow(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Reply {
    match s.workflow(&id, scope(&who)).await? {
        Some(w) => Ok(Json(w).into_response()),
        None => Err(not_found_workflow(&id)),
    }
}

#[derive(Debug, Deserialize)]
pub struct CancelBody {
    reason: Option<String>,
}

/// `POST /v1/workflows/{id}/cancel`: appends `CancelWorkflow`; 409 when it already ended.
pub async fn cancel(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let reason = if body.is_empty() {
        None
    } else {
        json_body::<CancelBody>(&body, "{\"reason\": \"…\"}")?.reason
    };
    commands::cancel(&s, &id, reason, &who)
        .await
        .map_err(command_problem)?;
    let mut body = workflow_urls(&id);
    body["workflow_id"] = json!(id);
    body["status"] = json!("CANCEL_REQUESTED");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Resume after this sequence number (like `Last-Event-ID`).
    after: Option<i64>,
}

/// `GET /v1/workflows/{id}/events`: Server-Sent Events, `id` = the event's sequence number.
pub async fn events(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Reply {
    let from_header = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_last_event_id",
                        "Last-Event-ID must be a sequence number",
                    )
                })?,
        ),
    };
    let after = from_header.or(q.after).unwrap_or(0);
    let scope = scope(&who).map(str::to_owned);
    // Another tenant's workflow is absent; one not projected yet may be the caller's own,
    // so the stream opens and checks the owner with its first events.
    if let Some(w) = crate::read::workflow(&s.pool, &id).await?
        && !w.visible_to(scope.as_deref())
    {
        return Err(not_found_workflow(&id));
    }
    let open = crate::metrics::StreamOpen::new(s.metrics.clone());
    let stream = EventStream::new(s, id, after, scope);
    let events = futures::stream::unfold((stream, open), |(mut st, open)| async move {
        let e = st.next().await?;
        let frame = Event::default()
            .id(e.sequence.to_string())
            .event(e.sse_name())
            .json_data(&*e)
            .unwrap_or_else(|_| Event::default().comment("unserialisable event"));
        Some((Ok::<_, std::convert::Infallible>(frame), (st, open)))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `GET /v1/health`: broker, PostgreSQL and registry reachability, models, projection lag.
pub async fn health(State(s): State<Arc<AppState>>) -> Response {
    let kafka = s.kafka.clone();
    let topic = s.names.events.clone();
    let broker = tokio::task::spawn_blocking(move || -> Result<i64, String> {
        let consumer: BaseConsumer = triad_kafka::client::reader_config(&kafka)
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        let mut end = 0;
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(3))
                    .map_err(|e| e.to_string())?;
                end += high;
            }
        }
        Ok(end)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let applied: Result<i64, String> = async {
        let client = s.pool.get().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets WHERE topic = $1",
                &[&s.names.events],
            )
            .await
            .map_err(|e| e.to_string())?;
        row.try_get::<_, i64>(0).map_err(|e| e.to_string())
    }
    .await;
    let registry = match s
        .http
        .get(format!("{}/subjects", s.registry_url.trim_end_matches('/')))
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    fn check<T>(r: &Result<T, String>) -> serde_json::Value {
        match r {
            Ok(_) => json!({"status": "ok"}),
            Err(e) => json!({"status": "down", "error": e}),
        }
    }
    let lag = match (&broker, &applied) {
        (Ok(end), Ok(done)) => json!(end - done),
        _ => serde_json::Value::Null,
    };
    let healthy = broker.is_ok() && applied.is_ok() && registry.is_ok();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "checks": {
            "broker": check(&broker),
            "postgres": check(&applied),
            "registry": check(&registry),
        },
        "models_registered": s.policy.models.as_ref().map_or(0, Vec::len),
        "projection_lag_records": lag,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn credits_problem(e: crate::credits::IssueError) -> Problem {
    use crate::credits::IssueError;
    match e {
        IssueError::Invalid { field, ref message } => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_credits",
                "the credits request is invalid",
            )
            .detail(e.to_string());
            p.errors = vec![json!({"field": field, "message": message})];
            p
        }
        IssueError::Unavailable(e) => Problem::from(e),
    }
}

fn account_not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "account_not_found",
        "no such account",
    )
    .detail(format!(
        "{id} has no ledger entries visible to you (credits are issued with POST \
         /v1/accounts/{id}/credits; a tenant sees its own accounts, <tenant>:<name>)"
    ))
}

/// `GET /v1/accounts/{id}`: the account's totals and ledger entries (its own tenant's, or
/// any for an operator; another tenant's reads as absent).
pub async fn account(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Reply {
    if !owns_account(&who, &id) {
        return Err(account_not_found(&id));
    }
    match s.ledger.account(&id).await {
        Some(a) => Ok(Json(a).into_response()),
        None => Err(account_not_found(&id)),
    }
}

/// `POST /v1/accounts/{id}/credits` (operator): issues credits; 201 with the ledger event,
/// or 202 when the ledger has not applied it within 10 s.
pub async fn issue_credits(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    require_role(&who, AccessRole::Operator, "issuing credits")?;
    let request: crate::credits::IssueRequest = json_body(&body, "a credits issue")?;
    let (command_id, event) = crate::credits::issue(&s, &id, &request, &who.actor())
        .await
        .map_err(credits_problem)?;
    let status = if event.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let body = json!({
        "command_id": command_id,
        "account_url": format!("/v1/accounts/{id}"),
        "event": event,
    });
    Ok((status, Json(body)).into_response())
}

/// `POST /v1/accounts/{id}/transfers`: always 403 — credits are non-transferable.
pub async fn transfer(Path(id): Path<String>) -> Reply {
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "non_transferable",
        "credits cannot be transferred",
    )
    .detail(format!(
        "{} (account {id})",
        triad_market::ledger::NON_TRANSFERABLE
    )))
}

/// `GET /v1/credits/supply`: issued, burned and circulating over every account (a
/// cross-tenant view: operators only).
pub async fn supply(State(s): State<Arc<AppState>>, Extension(who): Extension<Principal>) -> Reply {
    require_role(&who, AccessRole::Operator, "the credits supply")?;
    let supply = s.ledger.supply().await;
    Ok(Json(json!({
        "accounts": supply.accounts,
        "issued_micros": supply.issued_micros,
        "balance_micros": supply.balance_micros,
        "reserved_micros": supply.reserved_micros,
        "burned_micros": supply.burned_micros,
        "circulating_micros": supply.circulating_micros(),
        "problems": s.ledger.problems().await,
    }))
    .into_response())
}

fn registry_problem(e: crate::registry::RegistryError) -> Problem {
    use crate::registry::RegistryError;
    match e {
        RegistryError::Foreign(_) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the model belongs to another tenant",
        )
        .detail(e.to_string()),
        RegistryError::Invalid(ref errors) => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_registration",
                "the model registration is invalid",
            )
            .detail(e.to_string());
            p.errors = errors
                .0
                .iter()
                .map(|f| json!({"field": f.field, "message": f.message}))
                .collect();
            p
        }
        RegistryError::NotFound(_) => Problem::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            "no such registered model",
        )
        .detail(e.to_string()),
        RegistryError::Unavailable(e) => Problem::from(e),
    }
}

/// `GET /v1/models`: the configured models' ids and the registered remote models.
pub async fn models(State(s): State<Arc<AppState>>) -> Reply {
    let configured: Vec<String> = s
        .policy
        .models
        .iter()
        .flatten()
        .map(|m| m.id.clone())
        .collect();
    Ok(Json(json!({
        "configured": configured,
        "registered": s.registry.registered(&s),
    }))
    .into_response())
}

/// `POST /v1/models`: register a remote model (tenant admin): `{"id": …, "kind": …, …}`.
pub async fn register_model(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Reply {
    require_role(&who, AccessRole::TenantAdmin, "registering models")?;
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_document",
            "the body is not a model registration",
        )
        .detail(detail)
    };
    let mut document: serde_json::Map<String, serde_json::Value> =
        json_body(&body, "a model registration")?;
    let id = match document.remove("id") {
        Some(serde_json::Value::String(id)) => id,
        _ => {
            return Err(invalid(
                "id: a string naming the model is required".to_owned(),
            ));
        }
    };
    let spec: triad_market::registry::RemoteSpec =
        serde_json::from_value(serde_json::Value::Object(document))
            .map_err(|e| invalid(e.to_string()))?;
    let registered = crate::registry::register(&s, &id, spec, &who)
        .await
        .map_err(registry_problem)?;
    let status = if registered.unchanged {
        StatusCode::OK
    } else if registered.visible {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(registered)).into_response())
}

/// `DELETE /v1/models/{id}`: deregister a remote model (its tenant's admin, or an operator).
pub async fn deregister_model(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Reply {
    require_role(&who, AccessRole::TenantAdmin, "deregistering models")?;
    crate::registry::deregister(&s, &id, &who)
        .await
        .map_err(registry_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    #[serde(default)]
    sender: Option<String>,
}

/// `POST /v1/models/{id}/heartbeat`: a registered model says it is alive (its tenant's
/// admin, or an operator).
pub async fn model_heartbeat(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    require_role(&who, AccessRole::TenantAdmin, "model heartbeats")?;
    let sender = if body.is_empty() {
        None
    } else {
        json_body::<HeartbeatBody>(&body, "a heartbeat")?.sender
    };
    crate::registry::heartbeat(&s, &id, sender.as_deref().unwrap_or("api"), &who)
        .await
        .map_err(registry_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn key_problem(e: crate::keys::KeyError) -> Problem {
    use crate::keys::KeyError;
    use triad_auth::api_keys::ManageError;
    match e {
        KeyError::Manage(ManageError::Forbidden(why)) => {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", why)
        }
        KeyError::Manage(ManageError::NotFound(_)) => Problem::new(
            StatusCode::NOT_FOUND,
            "api_key_not_found",
            "no such API key",
        ),
        KeyError::Manage(ManageError::Revoked(id)) => Problem::new(
            StatusCode::CONFLICT,
            "api_key_revoked",
            format!("{id} is revoked; create a new key instead"),
        ),
        KeyError::Manage(ManageError::Invalid(e)) => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_api_key_request",
                "the key request is invalid",
            )
            .detail(e.to_string());
            p.errors = vec![json!({"field": e.field, "message": e.message})];
            p
        }
        KeyError::Unavailable(e) => Problem::from(e),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_document",
            format!("the body is not {what}"),
        )
        .detail(e.to_string())
    })
}

/// `GET /v1/api-keys`: the caller's tenant's keys (tenant admin), or every key (operator).
pub async fn api_keys(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Reply {
    let keys = crate::keys::list(&s, &who).map_err(key_problem)?;
    Ok(Json(json!({ "keys": keys })).into_response())
}

/// `POST /v1/api-keys`: create a key; the answer holds its text, shown this once.
pub async fn create_api_key(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Reply {
    let request: crate::keys::CreateKey = json_body(&body, "an API key request")?;
    let created = crate::keys::create(&s, &who, request)
        .await
        .map_err(key_problem)?;
    Ok((StatusCode::CREATED, no_store(), Json(created)).into_response())
}

/// `POST /v1/api-keys/{id}/rotate`: a new key replaces `id`, which is revoked.
pub async fn rotate_api_key(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Reply {
    let created = crate::keys::rotate(&s, &who, &id)
        .await
        .map_err(key_problem)?;
    Ok((StatusCode::CREATED, no_store(), Json(created)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    reason: String,
}

/// `POST /v1/api-keys/{id}/revoke` `{"reason": …}`: the key stops working.
pub async fn revoke_api_key(
    State(s): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let RevokeBody { reason } = json_body(&body, "a revocation ({\"reason\": …})")?;
    let key = crate::keys::revoke(&s, &who, &id, &reason)
        .await
        .map_err(key_problem)?;
    Ok(Json(key).into_response())
}

/// A new key's text must not be kept by caches on the way.
fn no_store() -> [(axum::http::HeaderName, &'static str); 1] {
    [(axum::http::header::CACHE_CONTROL, "no-store")]
}
