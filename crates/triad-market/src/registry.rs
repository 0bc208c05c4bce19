//! The model registry's rules (docs/market.md, "Registering a remote model"; ADR 0020): what
//! a remote model's registration must satisfy, and the view every consumer folds from the
//! compacted topic `triad.models`.
//!
//! The sovereignty policy stays authoritative: a registration may only name zones of the
//! policy, and its endpoint's host must be on `policy.hosts` of each of its zones that has a
//! list. The edge (CLI, REST, GraphQL) refuses a registration that breaks a rule, naming the
//! field; every consumer (executor, processor, API) checks again with its own policy, because
//! anyone with broker access can write the topic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use triad_domain::{ModelRegistration, RemoteKind, RemoteModel};
use triad_workflow::ModelOffer;

/// The longest model id: ids are Kafka keys, metric labels and log fields.
pub const MAX_MODEL_ID: usize = 64;
/// The records kept per model id in [`RegistryView`]: enough to decide a repaired input with
/// the view it was first decided with (module docs of `triad-processor`), bounded.
const HISTORY_PER_MODEL: usize = 16;

/// The wire protocol of a remote model, as written in a registration document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecKind {
    Openai,
    Anthropic,
}

/// A registration document (`triad models add FILE`, `POST /v1/models`, GraphQL
/// `registerModel`): the fields of a `[models.<id>]` entry that a remote model can state,
/// with the same defaults. Unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    pub kind: SpecKind,
    pub base_url: String,
    /// The provider's model name; defaults to the model id.
    #[serde(default)]
    pub model: Option<String>,
    /// The name of the variable holding the API key on each executor (never the key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub zones: Vec<String>,
    #[serde(default)]
    pub specialties: Vec<String>,
    #[serde(default)]
    pub input_micros_per_1k: i64,
    #[serde(default)]
    pub output_micros_per_1k: i64,
    #[serde(default = "default_latency")]
    pub latency_p50_ms: i64,
    #[serde(default = "default_latency")]
    pub latency_p95_ms: i64,
    #[serde(default = "default_latency")]
    pub latency_p99_ms: i64,
    #[serde(default = "default_context")]
    pub max_context: i64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: i64,
    #[serde(default)]
    pub bid_confidence: Option<f64>,
    /// How often the model sends heartbeats; 0 (default): none, executors probe it.
    #[serde(default)]
    pub heartbeat_every_ms: i64,
}

fn default_latency() -> i64 {
    1000
}

fn default_context() -> i64 {
    8192
}

fn default_timeout() -> i64 {
    60_000
}

impl RemoteSpec {
    /// The registration body of model `id`, registered by `by`.
    pub fn into_remote(self, id: &str, by: &str) -> RemoteModel {
        RemoteModel {
            kind: match self.kind {
                SpecKind::Openai => RemoteKind::Openai,
                SpecKind::Anthropic => RemoteKind::Anthropic,
            },
            base_url: self.base_url,
            model: self.model.unwrap_or_else(|| id.to_owned()),
            api_key_env: self.api_key_env,
            zones: self.zones,
            specialties: self.specialties,
            input_micros_per_1k: self.input_micros_per_1k,
            output_micros_per_1k: self.output_micros_per_1k,
            latency_p50_ms: self.latency_p50_ms,
            latency_p95_ms: self.latency_p95_ms,
            latency_p99_ms: self.latency_p99_ms,
            max_context: self.max_context,
            timeout_ms: self.timeout_ms,
            bid_confidence: self.bid_confidence,
            heartbeat_every_ms: self.heartbeat_every_ms,
            registered_by: by.to_owned(),
        }
    }
}

/// What a registration is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The policy's zones.
    pub zones: &'a [String],
    /// The policy's host allowlist per zone (`policy.hosts`).
    pub hosts: &'a BTreeMap<String, Vec<String>>,
    /// The configured models (`[models.*]` and enabled presets): a registration cannot
    /// replace one.
    pub configured: &'a BTreeSet<String>,
}

/// One broken rule, naming the field of the registration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every broken rule of a registration, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RegistrationErrors(pub Vec<FieldError>);

impl std::fmt::Display for RegistrationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        write!(f, "invalid model registration: {}", lines.join("; "))
    }
}

impl RegistrationErrors {
    /// The first field named, for APIs that report one.
    pub fn field(&self) -> Option<&str> {
        self.0.first().map(|e| e.field.as_str())
    }
}

/// Whether `id` can name a registered model: 1–64 characters of `a-z A-Z 0-9 . _ -`, not
/// starting with a separator.
pub fn valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MODEL_ID
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_env_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The host of a registration's endpoint, when its URL is usable.
pub fn endpoint_host(base_url: &str) -> Option<String> {
    let url = url::Url::parse(base_url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.host_str().map(str::to_owned)
}

/// Checks the registration of `model_id` against `rules`; every broken rule is reported.
pub fn check(
    model_id: &str,
    remote: &RemoteModel,
    rules: Rules<'_>,
) -> Result<(), RegistrationErrors> {
    let mut errors = Vec::new();
    let mut push = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
    };
    if !valid_model_id(model_id) {
        push(
            "id",
            format!(
                "{model_id:?} must be 1-{MAX_MODEL_ID} characters of a-z A-Z 0-9 . _ - starting with a letter or digit"
            ),
        );
    } else if rules.configured.contains(model_id) {
        push(
            "id",
            format!(
                "{model_id:?} is a configured model; change it in triad.toml, not by registration"
            ),
        );
    }
    let host = endpoint_host(&remote.base_url);
    if host.is_none() {
        push(
            "base_url",
            format!("{:?} is not an http(s) URL with a host", remote.base_url),
        );
    }
    if remote.model.trim().is_empty() {
        push("model", "must not be empty".to_owned());
    }
    if let Some(var) = &remote.api_key_env
        && !valid_env_name(var)
    {
        push(
            "api_key_env",
            format!(
                "{var:?} is not an environment variable name (A-Z 0-9 _); it names the variable, never the key"
            ),
        );
    }
    if remote.zones.is_empty() {
        push(
            "zones",
            "name at least one zone where the model processes data".to_owned(),
        );
    }
    for (i, zone) in remote.zones.iter().enumerate() {
        if !rules.zones.contains(zone) {
            push(
                &format!("zones[{i}]"),
                format!(
                    "{zone:?} is not a zone of the policy ({})",
                    rules.zones.join(", ")
                ),
            );
        } else if let (Some(host), Some(allowed)) = (&host, rules.hosts.get(zone))
            && !allowed.contains(host)
        {
            push(
                "base_url",
                format!("host {host} is not allowed in zone {zone} (policy.hosts)"),
            );
        }
    }
    for (i, s) in remote.specialties.iter().enumerate() {
        if s.trim().is_empty() {
            push(&format!("specialties[{i}]"), "must not be empty".to_owned());
        }
    }
    if remote.input_micros_per_1k < 0 {
        push("input_micros_per_1k", "must not be negative".to_owned());
    }
    if remote.output_micros_per_1k < 0 {
        push("output_micros_per_1k", "must not be negative".to_owned());
    }
    if remote.latency_p50_ms <= 0 {
        push("latency_p50_ms", "must be positive".to_owned());
    }
    if remote.latency_p95_ms < remote.latency_p50_ms {
        push(
            "latency_p95_ms",
            "must be at least latency_p50_ms".to_owned(),
        );
    }
    if remote.latency_p99_ms < remote.latency_p95_ms {
        push(
            "latency_p99_ms",
            "must be at least latency_p95_ms".to_owned(),
        );
    }
    if !(1..=i64::from(u32::MAX)).contains(&remote.max_context) {
        push("max_context", format!("must be within 1..={}", u32::MAX));
    }
    if !(1..=600_000).contains(&remote.timeout_ms) {
        push("timeout_ms", "must be within 1..=600000".to_owned());
    }
    if let Some(c) = remote.bid_confidence
        && !(c.is_finite() && (0.0..=1.0).contains(&c))
    {
        push("bid_confidence", format!("must be within [0, 1], not {c}"));
    }
    if remote.heartbeat_every_ms != 0 && !(100..=3_600_000).contains(&remote.heartbeat_every_ms) {
        push(
            "heartbeat_every_ms",
            "must be 0 (no heartbeats) or within 100..=3600000".to_owned(),
        );
    }
    if remote.registered_by.trim().is_empty() {
        push("registered_by", "must not be empty".to_owned());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RegistrationErrors(errors))
    }
}

/// The record registering `remote` as version `version` of `model_id`: a full state, so
/// compaction of `triad.models` keeps exactly the registrations in force.
pub fn registration(
    model_id: &str,
    version: i64,
    remote: RemoteModel,
    registered_at: i64,
) -> ModelRegistration {
    ModelRegistration {
        model_id: model_id.to_owned(),
        version,
        component_sha256: String::new(),
        component_size: 0,
        component: None,
        component_path: None,
        registered_at,
        remote: Some(remote),
        schema_version: triad_domain::MODEL_REGISTRATION_SCHEMA_VERSION,
    }
}

/// What the workflow validator and the cost model know of a registered model.
pub fn offer(model_id: &str, remote: &RemoteModel) -> ModelOffer {
    ModelOffer {
        id: model_id.to_owned(),
        zones: remote.zones.clone(),
        specialties: remote.specialties.clone(),
        input_micros_per_1k: remote.input_micros_per_1k,
        output_micros_per_1k: remote.output_micros_per_1k,
        max_context: u32::try_from(remote.max_context).unwrap_or(u32::MAX),
        latency_p50_ms: u64::try_from(remote.latency_p50_ms).unwrap_or(0),
        latency_p95_ms: u64::try_from(remote.latency_p95_ms).unwrap_or(0),
    }
}

/// A registered remote model as of some position of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub version: i64,
    /// The `triad.models` offset of the record.
    pub offset: i64,
    pub remote: RemoteModel,
}

/// The remote models of `triad.models`, folded in log order (the topic has one partition,
/// so an offset is a position of the whole registry). A later record of a model replaces
/// its earlier one, as compaction does; a tombstone deregisters it. Component versions of
/// configured `wasm` models are not remote models and are left to the executors' hot swap.
#[derive(Debug, Clone, Default)]
pub struct RegistryView {
    history: BTreeMap<String, Vec<(i64, Option<Registered>)>>,
    position: i64,
}

impl RegistryView {
    /// Applies the record at `offset` with key `model_id`; `None` is a tombstone. Returns
    /// whether the remote models changed.
    pub fn apply(
        &mut self,
        offset: i64,
        model_id: &str,
        registration: Option<&ModelRegistration>,
    ) -> bool {
        self.position = self.position.max(offset + 1);
        let entry = match registration {
            Some(r) => match &r.remote {
                Some(remote) => Some(Registered {
                    version: r.version,
                    offset,
                    remote: remote.clone(),
                }),
                // A component version: not a remote model.
                None => return false,
            },
            None => {
                if !self.history.contains_key(model_id) {
                    return false;
                }
                None
            }
        };
        let records = self.history.entry(model_id.to_owned()).or_default();
        records.push((offset, entry));
        if records.len() > HISTORY_PER_MODEL {
            records.remove(0);
        }
        true
    }

    /// One past the offset of the last record applied: the registry's position.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The remote models registered before `position` (all applied records when `None`).
    pub fn at(&self, position: Option<i64>) -> BTreeMap<String, Registered> {
        let limit = position.unwrap_or(i64::MAX);
        self.history
            .iter()
            .filter_map(|(id, records)| {
                let (_, latest) = records.iter().rev().find(|(o, _)| *o < limit)?;
                latest.clone().map(|r| (id.clone(), r))
            })
            .collect()
    }

    /// The latest version registered for `model_id` (deregistered or not), 0 when none.
    pub fn latest_version(&self, model_id: &str) -> i64 {
        self.history
            .get(model_id)
            .and_then(|records| {
                records
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().map(|r| r.version))
                    .max()
            })
            .unwrap_or(0)
    }
}

/// The models a workflow may use as of `position`: the configured offers first (the first
/// is the default model), then the registered models that pass `rules`. The second list
/// names the registrations left out and why.
pub fn offers_at(
    configured: &[ModelOffer],
    view: &RegistryView,
    position: Option<i64>,
    rules: Rules<'_>,
) -> (Vec<ModelOffer>, Vec<(String, RegistrationErrors)>) {
    let mut offers = configured.to_vec();
    let mut refused = Vec::new();
    for (id, r) in view.at(position) {
        match check(&id, &r.remote, rules) {
            Ok(()) => offers.push(offer(&id, &r.remote)),
            Err(e) => refused.push((id, e)),
        }
    }
    (offers, refused)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn remote() -> RemoteModel {
        let spec: RemoteSpec = serde_json::from_value(serde_json::json!({
            "kind": "openai",
            "base_url": "http://vllm.east.internal:8000",
            "zones": ["US-EAST"],
            "specialties": ["code"],
            "input_micros_per_1k": 40,
            "output_micros_per_1k": 120,
        }))
        .unwrap();
        spec.into_remote("vllm-east", "operator")
    }

    fn zones() -> Vec<String> {
        vec!["US-EAST".to_owned(), "EU-WEST".to_owned()]
    }

    #[test]
    fn a_document_gets_the_config_defaults_and_unknown_fields_are_refused() {
        let r = remote();
        assert_eq!(r.model, "vllm-east");
        assert_eq!(
            (r.latency_p50_ms, r.max_context, r.timeout_ms),
            (1000, 8192, 60_000)
        );
        assert_eq!(r.heartbeat_every_ms, 0);
        let err = serde_json::from_value::<RemoteSpec>(serde_json::json!({
            "kind": "openai", "base_url": "http://x", "zones": [], "api_key": "sk-secret"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `api_key`"), "{err}");
    }

    #[test]
    fn the_policy_decides_zones_and_hosts_and_every_broken_rule_names_its_field() {
        let zones = zones();
        let configured = BTreeSet::from(["triad-local".to_owned()]);
        let mut hosts = BTreeMap::new();
        fn rules<'a>(
            zones: &'a [String],
            hosts: &'a BTreeMap<String, Vec<String>>,
            configured: &'a BTreeSet<String>,
        ) -> Rules<'a> {
            Rules {
                zones,
                hosts,
                configured,
            }
        }
        assert_eq!(
            check("vllm-east", &remote(), rules(&zones, &hosts, &configured)),
            Ok(())
        );

        hosts.insert("US-EAST".to_owned(), vec!["api.partner.example".to_owned()]);
        let err = check("vllm-east", &remote(), rules(&zones, &hosts, &configured)).unwrap_err();
        assert_eq!(err.field(), Some("base_url"));
        assert!(
            err.to_string()
                .contains("host vllm.east.internal is not allowed in zone US-EAST (policy.hosts)"),
            "{err}"
        );
        hosts.clear();

        let mut bad = remote();
        bad.zones = vec!["US-EAST".to_owned(), "MARS".to_owned()];
        bad.base_url = "ftp://x".to_owned();
        bad.api_key_env = Some("sk-live-123".to_owned());
        bad.latency_p95_ms = 10;
        bad.bid_confidence = Some(f64::NAN);
        bad.heartbeat_every_ms = 5;
        let err = check("triad-local", &bad, rules(&zones, &hosts, &configured)).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "base_url",
                "api_key_env",
                "zones[1]",
                "latency_p95_ms",
                "bid_confidence",
                "heartbeat_every_ms"
            ]
        );
        assert!(err.0[0].message.contains("is a configured model"));
        assert!(
            err.0[3]
                .message
                .contains("\"MARS\" is not a zone of the policy")
        );
        assert!(!valid_model_id("-x") && !valid_model_id("a b") && valid_model_id("vllm.east_1-b"));
    }

    fn registration(version: i64, remote: Option<RemoteModel>) -> ModelRegistration {
        ModelRegistration {
            model_id: "vllm-east".to_owned(),
            version,
            component_sha256: String::new(),
            component_size: 0,
            component: None,
            component_path: None,
            registered_at: 0,
            remote,
            schema_version: 2,
        }
    }

    #[test]
    fn the_view_answers_as_of_any_position_and_a_tombstone_deregisters() {
        let mut view = RegistryView::default();
        assert!(!view.apply(0, "triad-local", Some(&registration(2, None))));
        assert!(
            !view.apply(1, "gone", None),
            "a tombstone of nothing changes nothing"
        );
        assert!(view.apply(2, "vllm-east", Some(&registration(1, Some(remote())))));
        let mut dearer = remote();
        dearer.output_micros_per_1k = 999;
        assert!(view.apply(5, "vllm-east", Some(&registration(2, Some(dearer)))));
        assert!(view.apply(7, "vllm-east", None));
        assert_eq!(view.position(), 8);
        assert!(view.at(Some(2)).is_empty());
        assert_eq!(
            view.at(Some(3))["vllm-east"].remote.output_micros_per_1k,
            120
        );
        assert_eq!(view.at(Some(6))["vllm-east"].version, 2);
        assert!(view.at(None).is_empty(), "deregistered");
        assert_eq!(view.latest_version("vllm-east"), 2);

        let zones = zones();
        let configured = BTreeSet::new();
        let hosts = BTreeMap::new();
        let rules = Rules {
            zones: &zones,
            hosts: &hosts,
            configured: &configured,
        };
        let base = [ModelOffer::new("triad-local", vec![], vec![])];
        let (offers, refused) = offers_at(&base, &view, Some(6), rules);
        let ids: Vec<&str> = offers.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["triad-local", "vllm-east"]);
        assert_eq!(offers[1].output_micros_per_1k, 999);
        assert!(refused.is_empty());
        // A record some other writer got wrong is left out, with the reason.
        let mut outside = remote();
        outside.zones = vec!["MARS".to_owned()];
        view.apply(9, "vllm-east", Some(&registration(3, Some(outside))));
        let (offers, refused) = offers_at(&base, &view, None, rules);
        assert_eq!(offers.len(), 1);
        assert_eq!(refused[0].0, "vllm-east");
        assert_eq!(refused[0].1.field(), Some("zones[0]"));
    }
}
