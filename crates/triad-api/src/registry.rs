//! The model registry at the API (ADR 0020, docs/market.md "Registering a remote model"):
//! an in-memory view of `triad.models` followed from offset 0 — the read model behind
//! GraphQL `models` and the models a submission may name — and the edge of self-registration:
//! `registerModel` / `POST /v1/models`, `deregisterModel` / `DELETE /v1/models/{id}` and
//! heartbeats (`POST /v1/models/{id}/heartbeat`). These are tenant-admin actions: a model
//! belongs to the tenant that registered it, and only that tenant (or an operator) changes it.
//!
//! A registration is checked against this node's policy before anything is written, and
//! every consumer checks it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::Duration;

use rdkafka::message::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use triad_domain::{ModelHeartbeat, ModelRegistration, RemoteModel};
use triad_market::registry::{self, RegistryView, RemoteSpec, Rules};
use triad_workflow::ModelOffer;

use crate::AppState;

/// How long a registration waits to see its record in the view before answering 202.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// The API's view of the registry.
#[derive(Debug)]
pub struct ModelRegistry {
    view: RwLock<RegistryView>,
    /// Registration time of each record in force (the view keeps the bodies).
    registered_at: RwLock<BTreeMap<String, i64>>,
    position: watch::Sender<i64>,
    hosts: BTreeMap<String, Vec<String>>,
}

impl ModelRegistry {
    /// An empty view checking registrations against the policy's `hosts` (the zones come
    /// from the API's policy).
    pub fn new(hosts: BTreeMap<String, Vec<String>>) -> Self {
        Self {
            view: RwLock::new(RegistryView::default()),
            registered_at: RwLock::new(BTreeMap::new()),
            position: watch::channel(0).0,
            hosts,
        }
    }

    fn apply(&self, offset: i64, key: &str, registration: Option<&ModelRegistration>) {
        if let Ok(mut view) = self.view.write() {
            view.apply(offset, key, registration);
        }
        if let Ok(mut at) = self.registered_at.write() {
            match registration {
                Some(r) if r.remote.is_some() => {
                    at.insert(key.to_owned(), r.registered_at);
                }
                Some(_) => {}
                None => {
                    at.remove(key);
                }
            }
        }
        self.position.send_replace(offset + 1);
    }

    /// Waits until the view applied the record at `offset` (false after `timeout`).
    async fn seen(&self, offset: i64, timeout: Duration) -> bool {
        let mut position = self.position.subscribe();
        tokio::time::timeout(timeout, position.wait_for(|p| *p > offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The remote models registered now and passing this node's policy, with their version
    /// and registration time.
    pub fn registered(&self, state: &AppState) -> Vec<RegisteredModel> {
        let configured = configured(state);
        let rules = self.rules(state, &configured);
        let at = self
            .registered_at
            .read()
            .map(|m| m.clone())
            .unwrap_or_default();
        self.view
            .read()
            .map(|v| v.at(None))
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, r)| registry::check(id, &r.remote, rules).is_ok())
            .map(|(id, r)| RegisteredModel {
                registered_at: at.get(&id).copied().unwrap_or_default(),
                model_id: id,
                version: r.version,
                remote: r.remote,
            })
            .collect()
    }

    fn rules<'a>(&'a self, state: &'a AppState, configured: &'a BTreeSet<String>) -> Rules<'a> {
        Rules {
            zones: &state.policy.zones,
            hosts: &self.hosts,
            configured,
        }
    }

    /// The models a submission may use now: the configured ones, then the registered ones.
    pub fn offers(&self, state: &AppState) -> Vec<ModelOffer> {
        let configured_offers = state.policy.models.clone().unwrap_or_default();
        let configured = configured(state);
        let rules = self.rules(state, &configured);
        let Ok(view) = self.view.read() else {
            return configured_offers;
        };
        registry::offers_at(&configured_offers, &view, None, rules).0
    }
}

fn configured(state: &AppState) -> BTreeSet<String> {
    state
        .policy
        .models
        .iter()
        .flatten()
        .map(|m| m.id.clone())
        .collect()
}

/// A registered remote model as the API serves it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegisteredModel {
    pub model_id: String,
    pub version: i64,
    pub registered_at: i64,
    pub remote: RemoteModel,
}

/// Follows `triad.models` from offset 0 into `state.registry` until `cancel`.
pub async fn follow(state: std::sync::Arc<AppState>, cancel: CancellationToken) {
    let topic = state.names.models.clone();
    let each = |m: rdkafka::message::OwnedMessage| {
        let state = state.clone();
        async move {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let registration = match m.payload() {
                None => None,
                Some(bytes) => match state.codec.decode::<ModelRegistration>(Some(bytes)).await {
                    Ok(r) => Some(r),
                    Err(error) => {
                        tracing::warn!(%error, messaging.destination.name = %state.names.models, messaging.kafka.offset = m.offset(), "undecodable registration skipped");
                        state.registry.position.send_replace(m.offset() + 1);
                        return;
                    }
                },
            };
            state
                .registry
                .apply(m.offset(), &key, registration.as_ref());
        }
    };
    crate::follow_topic(&state.kafka, &topic, 1, cancel, each).await;
}

/// Why a registry action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model {0:?} belongs to another tenant")]
    Foreign(String),
    #[error("{0}")]
    Invalid(registry::RegistrationErrors),
    #[error("model {0:?} is not a registered remote model")]
    NotFound(String),
    #[error(transparent)]
    Unavailable(#[from] crate::Error),
}

/// The tenant that registered `id` (`registered_by` is `<tenant>/<subject>` through the
/// API); none for a model registered through the operator's door. `Err(NotFound)` when `id`
/// is not registered now.
fn owner(state: &AppState, id: &str) -> Result<Option<String>, RegistryError> {
    state
        .registry
        .view
        .read()
        .ok()
        .and_then(|v| v.at(None).remove(id))
        .map(|r| {
            r.remote
                .registered_by
                .split_once('/')
                .map(|(tenant, _)| tenant.to_owned())
        })
        .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
}

/// Whether `principal` may change model `id`: an operator any, a tenant admin its tenant's
/// (a model nobody holds now is free to register).
fn may_change(
    state: &AppState,
    id: &str,
    principal: &triad_auth::Principal,
    must_exist: bool,
) -> Result<(), RegistryError> {
    match owner(state, id) {
        Err(e) if must_exist => Err(e),
        Err(_) => Ok(()),
        Ok(tenant) if crate::access::owns(principal, tenant.as_deref()) => Ok(()),
        Ok(_) => Err(RegistryError::Foreign(id.to_owned())),
    }
}

/// What a registration answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registered {
    pub registration: ModelRegistration,
    /// Whether this node's view shows it already (reads right after see it).
    pub visible: bool,
    /// The model was already registered exactly so: nothing was written.
    pub unchanged: bool,
}

/// Checks and appends the registration of `id`, one version above its latest.
pub async fn register(
    state: &AppState,
    id: &str,
    spec: RemoteSpec,
    principal: &triad_auth::Principal,
) -> Result<Registered, RegistryError> {
    may_change(state, id, principal, false)?;
    let by = principal.actor();
    let by = by.as_str();
    let remote = spec.into_remote(id, by);
    let configured = configured(state);
    registry::check(id, &remote, state.registry.rules(state, &configured))
        .map_err(RegistryError::Invalid)?;
    let (current, latest) = state
        .registry
        .view
        .read()
        .map(|v| (v.at(None).remove(id), v.latest_version(id)))
        .unwrap_or_default();
    if let Some(current) = current.filter(|c| c.remote == remote) {
        let at = state
            .registry
            .registered_at
            .read()
            .ok()
            .and_then(|m| m.get(id).copied())
            .unwrap_or_default();
        return Ok(Registered {
            registration: registry::registration(id, current.version, current.remote, at),
            visible: true,
            unchanged: true,
        });
    }
    let version = latest + 1;
    let registration = registry::registration(id, version, remote, triad_kafka::now_micros());
    let delivered = state
        .producer
        .send_record(&state.codec, &state.names.models, None, id, &registration)
        .await
        .map_err(crate::Error::from)?;
    tracing::info!(model = %id, version, by, messaging.destination.name = %state.names.models, "remote model registered");
    let visible = state.registry.seen(delivered.offset, SEEN_WITHIN).await;
    Ok(Registered {
        registration,
        visible,
        unchanged: false,
    })
}

/// Writes the tombstone of registered model `id`.
pub async fn deregister(
    state: &AppState,
    id: &str,
    principal: &triad_auth::Principal,
) -> Result<(), RegistryError> {
    may_change(state, id, principal, true)?;
    let delivered = state
        .producer
        .send(&state.names.models, Some(id.as_bytes()), None, &[])
        .await
        .map_err(crate::Error::from)?;
    tracing::info!(model = %id, actor = %principal.actor(), messaging.destination.name = %state.names.models, "remote model deregistered");
    state.registry.seen(delivered.offset, SEEN_WITHIN).await;
    Ok(())
}

/// Appends a heartbeat of registered model `id` from `sender`.
pub async fn heartbeat(
    state: &AppState,
    id: &str,
    sender: &str,
    principal: &triad_auth::Principal,
) -> Result<(), RegistryError> {
    may_change(state, id, principal, true)?;
    let version = state
        .registry
        .view
        .read()
        .ok()
        .and_then(|v| v.at(None).get(id).map(|r| r.version))
        .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
    let beat = ModelHeartbeat {
        model_id: id.to_owned(),
        version,
        sender: sender.to_owned(),
        sent_at: triad_kafka::now_micros(),
        schema_version: 1,
    };
    state
        .producer
        .send_record(&state.codec, &state.names.model_health, None, id, &beat)
        .await
        .map_err(crate::Error::from)?;
    Ok(())
}

/// A registered remote model's registration, for GraphQL (`Model.registration`).
#[derive(Debug, Clone, serde::Serialize, async_graphql::SimpleObject)]
#[graphql(name = "ModelRegistration")]
pub struct RegistrationView {
    pub version: crate::long::Long,
    /// `OPENAI` (chat completions) or `ANTHROPIC` (Messages API).
    pub kind: String,
    pub base_url: String,
    /// The provider's model name.
    pub model: String,
    /// The variable holding the API key on each executor (a name, never the key).
    pub api_key_env: Option<String>,
    pub zones: Vec<String>,
    pub specialties: Vec<String>,
    pub input_micros_per_1k: crate::long::Long,
    pub output_micros_per_1k: crate::long::Long,
    pub latency_p50_ms: crate::long::Long,
    pub latency_p95_ms: crate::long::Long,
    pub latency_p99_ms: crate::long::Long,
    pub max_context: crate::long::Long,
    pub timeout_ms: crate::long::Long,
    pub bid_confidence: Option<f64>,
    /// 0: the model sends no heartbeats and executors probe it.
    pub heartbeat_every_ms: crate::long::Long,
    pub registered_by: String,
    /// Microseconds since the Unix epoch.
    pub registered_at: crate::long::Long,
}

impl From<&RegisteredModel> for RegistrationView {
    fn from(m: &RegisteredModel) -> Self {
        use crate::long::Long;
        let r = &m.remote;
        Self {
            version: Long(m.version),
            kind: match r.kind {
                triad_domain::RemoteKind::Openai => "OPENAI",
                triad_domain::RemoteKind::Anthropic => "ANTHROPIC",
            }
            .to_owned(),
            base_url: r.base_url.clone(),
            model: r.model.clone(),
            api_key_env: r.api_key_env.clone(),
            zones: r.zones.clone(),
            specialties: r.specialties.clone(),
            input_micros_per_1k: Long(r.input_micros_per_1k),
            output_micros_per_1k: Long(r.output_micros_per_1k),
            latency_p50_ms: Long(r.latency_p50_ms),
            latency_p95_ms: Long(r.latency_p95_ms),
            latency_p99_ms: Long(r.latency_p99_ms),
            max_context: Long(r.max_context),
            timeout_ms: Long(r.timeout_ms),
            bid_confidence: r.bid_confidence,
            heartbeat_every_ms: Long(r.heartbeat_every_ms),
            registered_by: r.registered_by.clone(),
            registered_at: Long(m.registered_at),
        }
    }
}

/// `registerModel`'s input: the fields of a registration document (docs/market.md), with
/// the same defaults.
#[derive(Debug, Clone, async_graphql::InputObject)]
pub struct RemoteModelInput {
    /// `openai` or `anthropic`.
    pub kind: String,
    pub base_url: String,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    pub zones: Vec<String>,
    pub specialties: Option<Vec<String>>,
    pub input_micros_per_1k: Option<crate::long::Long>,
    pub output_micros_per_1k: Option<crate::long::Long>,
    pub latency_p50_ms: Option<crate::long::Long>,
    pub latency_p95_ms: Option<crate::long::Long>,
    pub latency_p99_ms: Option<crate::long::Long>,
    pub max_context: Option<crate::long::Long>,
    pub timeout_ms: Option<crate::long::Long>,
    pub bid_confidence: Option<f64>,
    pub heartbeat_every_ms: Option<crate::long::Long>,
}

impl RemoteModelInput {
    /// The registration document it stands for: absent fields take the document's defaults,
    /// and a bad `kind` is refused as in a document.
    pub fn into_spec(self) -> Result<RemoteSpec, String> {
        let mut doc = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            doc.insert(k.to_owned(), v);
        };
        put("kind", self.kind.into());
        put("base_url", self.base_url.into());
        put("zones", self.zones.into());
        let optional_strings = [("model", self.model), ("api_key_env", self.api_key_env)];
        for (k, v) in optional_strings {
            if let Some(v) = v {
                put(k, v.into());
            }
        }
        if let Some(s) = self.specialties {
            put("specialties", s.into());
        }
        let longs = [
            ("input_micros_per_1k", self.input_micros_per_1k),
            ("output_micros_per_1k", self.output_micros_per_1k),
            ("latency_p50_ms", self.latency_p50_ms),
            ("latency_p95_ms", self.latency_p95_ms),
            ("latency_p99_ms", self.latency_p99_ms),
            ("max_context", self.max_context),
            ("timeout_ms", self.timeout_ms),
            ("heartbeat_every_ms", self.heartbeat_every_ms),
        ];
        for (k, v) in longs {
            if let Some(v) = v {
                put(k, v.0.into());
            }
        }
        if let Some(c) = self.bid_confidence {
            put("bid_confidence", c.into());
        }
        serde_json::from_value(serde_json::Value::Object(doc)).map_err(|e| e.to_string())
    }
}
