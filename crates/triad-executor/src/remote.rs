//! Remote models that registered themselves on `triad.models` (ADR 0020, docs/market.md):
//! the executor keeps an adapter for each registration in force, next to its configured
//! catalogue, and serves it from the next task on — no restart.
//!
//! Each registration is checked again here against this executor's own policy (zones,
//! `policy.hosts`, configured ids): the topic may be written by anyone with broker access, so
//! the edge's check is not trusted. A registration that fails, or whose adapter cannot be
//! built (e.g. its key variable is not set here), is refused and reported; the model is then
//! not served by this executor, whatever an earlier version was. A tombstone deregisters.
//!
//! Liveness: a model that registered with `heartbeat_every_ms` is judged on its heartbeats
//! (`triad.model-health`) instead of probes: after `executor.unhealthy_after` intervals
//! without one it is unhealthy, and the next heartbeat makes it healthy again.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use triad_domain::{AdapterInstall, ModelRegistration};
use triad_market::registry::{self, Rules};
use triad_models::ModelAdapter;

use crate::registry::Verdict;

#[derive(Debug)]
struct Entry {
    version: i64,
    remote: triad_domain::RemoteModel,
    adapter: Arc<dyn ModelAdapter>,
    heartbeat_every: Option<Duration>,
    last_heartbeat: Instant,
}

/// The remote models this executor serves, by model id.
#[derive(Debug, Default)]
pub(crate) struct RemoteModels {
    entries: RwLock<BTreeMap<String, Entry>>,
}

fn report(model_id: &str, version: i64, installed: bool, reason: Option<String>) -> Verdict {
    Verdict::Report(AdapterInstall {
        model_id: model_id.to_owned(),
        version,
        component_sha256: String::new(),
        installed,
        reason,
    })
}

impl RemoteModels {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<dyn ModelAdapter>> {
        let entries = self.entries.read().ok()?;
        entries.get(id).map(|e| e.adapter.clone())
    }

    pub(crate) fn all(&self) -> Vec<(String, Arc<dyn ModelAdapter>)> {
        self.entries.read().map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .iter()
                    .map(|(id, e)| (id.clone(), e.adapter.clone()))
                    .collect()
            },
        )
    }

    /// Applies the record with key `key` of `triad.models` (`None`: a tombstone).
    /// `registration` has a remote body; component versions go to `crate::registry`.
    pub(crate) fn apply(
        &self,
        key: &str,
        registration: Option<&ModelRegistration>,
        rules: Rules<'_>,
        env: &impl Fn(&str) -> Option<String>,
        now: Instant,
    ) -> Verdict {
        let Ok(mut entries) = self.entries.write() else {
            return Verdict::Ignored;
        };
        let Some(registration) = registration else {
            return match entries.remove(key) {
                Some(old) => {
                    tracing::info!(model = %key, version = old.version, "remote model deregistered");
                    report(key, old.version, false, Some("deregistered".to_owned()))
                }
                None => Verdict::Ignored,
            };
        };
        let Some(remote) = &registration.remote else {
            return Verdict::Ignored;
        };
        let id = registration.model_id.as_str();
        if entries.get(id).is_some_and(|e| {
            e.version > registration.version
                || (e.version == registration.version && &e.remote == remote)
        }) {
            // A replayed registration after a restart, or an older one. (Two writers racing
            // to the same version: the later record wins, as in every other view.)
            return Verdict::Ignored;
        }
        let built = if key == id {
            registry::check(id, remote, rules)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    triad_models::adapter(id, &triad_models::remote_config(remote), env)
                        .map_err(|e| e.to_string())
                })
                .and_then(|a| a.ok_or_else(|| "no adapter for this kind".to_owned()))
        } else {
            Err(format!(
                "the record's key {key:?} is not its model id {id:?}"
            ))
        };
        match built {
            Ok(adapter) => {
                let heartbeat_every = u64::try_from(remote.heartbeat_every_ms)
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis);
                entries.insert(
                    id.to_owned(),
                    Entry {
                        version: registration.version,
                        remote: remote.clone(),
                        adapter,
                        heartbeat_every,
                        // A fresh registration gets the full grace before its first heartbeat.
                        last_heartbeat: now,
                    },
                );
                tracing::info!(model = %id, version = registration.version, base_url = %remote.base_url, zones = ?remote.zones, "remote model registered");
                report(id, registration.version, true, None)
            }
            Err(reason) => {
                let dropped = entries.remove(id).is_some();
                tracing::warn!(model = %id, version = registration.version, %reason, dropped, "remote model registration refused");
                report(id, registration.version, false, Some(reason))
            }
        }
    }

    /// A heartbeat of `id` arrived; false when it is not a remote model served here.
    pub(crate) fn heartbeat(&self, id: &str, now: Instant) -> bool {
        let Ok(mut entries) = self.entries.write() else {
            return false;
        };
        match entries.get_mut(id) {
            Some(e) => {
                e.last_heartbeat = now;
                true
            }
            None => false,
        }
    }

    /// How many heartbeats each model that sends them has missed.
    pub(crate) fn missed(&self, now: Instant) -> BTreeMap<String, u64> {
        self.entries.read().map_or_else(
            |_| BTreeMap::new(),
            |entries| {
                entries
                    .iter()
                    .filter_map(|(id, e)| {
                        let every = e.heartbeat_every?;
                        let silent = now.saturating_duration_since(e.last_heartbeat);
                        let missed = silent.as_millis() / every.as_millis().max(1);
                        Some((id.clone(), u64::try_from(missed).unwrap_or(u64::MAX)))
                    })
                    .collect()
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn registration(version: i64, zones: &[&str]) -> ModelRegistration {
        let spec: triad_market::registry::RemoteSpec = serde_json::from_value(serde_json::json!({
            "kind": "openai", "base_url": "http://127.0.0.1:9", "zones": zones,
            "heartbeat_every_ms": 1000
        }))
        .unwrap();
        triad_market::registry::registration(
            "vllm-east",
            version,
            spec.into_remote("vllm-east", "operator"),
            0,
        )
    }

    fn installed(v: &Verdict) -> Option<bool> {
        match v {
            Verdict::Report(r) => Some(r.installed),
            Verdict::Ignored => None,
        }
    }

    #[test]
    fn registrations_are_rechecked_replaced_by_version_and_dropped_by_tombstones() {
        let zones = vec!["US-EAST".to_owned()];
        let hosts = BTreeMap::new();
        let configured = BTreeSet::new();
        let rules = Rules {
            zones: &zones,
            hosts: &hosts,
            configured: &configured,
        };
        let env = |_: &str| None;
        let t0 = Instant::now();
        let models = RemoteModels::default();
        let v1 = registration(1, &["US-EAST"]);
        assert_eq!(
            installed(&models.apply("vllm-east", Some(&v1), rules, &env, t0)),
            Some(true)
        );
        assert!(models.get("vllm-east").is_some());
        assert_eq!(
            installed(&models.apply("vllm-east", Some(&v1), rules, &env, t0)),
            None,
            "a replay"
        );
        // A version outside the policy is refused and the model is no longer served.
        let outside = registration(2, &["MARS"]);
        let v = models.apply("vllm-east", Some(&outside), rules, &env, t0);
        let Verdict::Report(r) = &v else {
            panic!("{v:?}")
        };
        assert!(
            !r.installed && r.reason.as_deref().unwrap().contains("MARS"),
            "{r:?}"
        );
        assert!(models.get("vllm-east").is_none());
        // A key variable this executor does not have is refused too.
        let mut keyed = registration(3, &["US-EAST"]);
        keyed.remote.as_mut().unwrap().api_key_env = Some("TRIAD_TEST_NO_SUCH_KEY".to_owned());
        let v = models.apply("vllm-east", Some(&keyed), rules, &env, t0);
        let Verdict::Report(r) = &v else {
            panic!("{v:?}")
        };
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("TRIAD_TEST_NO_SUCH_KEY"),
            "{r:?}"
        );
        let v4 = registration(4, &["US-EAST"]);
        assert_eq!(
            installed(&models.apply("vllm-east", Some(&v4), rules, &env, t0)),
            Some(true)
        );

        // Heartbeats: missed intervals count from the registration, then from the last one.
        let later = t0 + Duration::from_millis(3500);
        assert_eq!(models.missed(later)["vllm-east"], 3);
        assert!(models.heartbeat("vllm-east", later));
        assert!(!models.heartbeat("unknown", later));
        assert_eq!(
            models.missed(later + Duration::from_millis(999))["vllm-east"],
            0
        );

        let v = models.apply("vllm-east", None, rules, &env, t0);
        assert_eq!(installed(&v), Some(false));
        assert!(models.all().is_empty());
        assert_eq!(
            installed(&models.apply("vllm-east", None, rules, &env, t0)),
            None
        );
    }
}
