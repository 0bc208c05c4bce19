//! Hot swap: the executor follows the compacted model registry `triad.models` from its start
//! and installs each registered component version of a model it serves, so new calls run
//! the new version while calls in flight finish on theirs. Each install or refusal is
//! reported on `triad.executor-status` (`AdapterInstall`).
//!
//! A registration is checked before anything changes: its bytes (carried in the record, or
//! read from `component_path`) must have the registered size and SHA-256, and the component
//! must link against the host and answer `capabilities`. Versions only go up, so replaying
//! the topic after a restart lands on the latest version and installs nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use triad_domain::{AdapterInstall, ModelRegistration};
use triad_models::{Install, Replaceable};

/// What to do with one registration.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Not a model of this executor, or a version it already runs: nothing to report.
    Ignored,
    Report(AdapterInstall),
}

/// Applies `registration` to `models`.
pub(crate) async fn apply(
    models: &BTreeMap<String, Arc<dyn Replaceable>>,
    registration: ModelRegistration,
) -> Verdict {
    let Some(model) = models.get(&registration.model_id) else {
        tracing::debug!(model = %registration.model_id, "registration of a model not served here");
        return Verdict::Ignored;
    };
    let refuse = |reason: String| {
        tracing::warn!(
            model = %registration.model_id,
            version = registration.version,
            %reason,
            "component registration refused; the running version stays"
        );
        Verdict::Report(AdapterInstall {
            model_id: registration.model_id.clone(),
            version: registration.version,
            component_sha256: registration.component_sha256.clone(),
            installed: false,
            reason: Some(reason),
        })
    };
    let Ok(number) = u64::try_from(registration.version) else {
        return refuse(format!(
            "version {} is not a positive number",
            registration.version
        ));
    };
    if number <= model.code_version().number {
        return Verdict::Ignored;
    }
    let bytes = match (&registration.component, &registration.component_path) {
        (Some(bytes), None) => bytes.clone(),
        (None, Some(path)) => match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(e) => return refuse(format!("component_path {path}: {e}")),
        },
        (Some(_), Some(_)) => {
            return refuse("the registration has both component and component_path".to_owned());
        }
        (None, None) => {
            return refuse("the registration has neither component nor component_path".to_owned());
        }
    };
    if i64::try_from(bytes.len()).ok() != Some(registration.component_size) {
        return refuse(format!(
            "the component has {} bytes, the registration says {}",
            bytes.len(),
            registration.component_size
        ));
    }
    let sha256 = triad_store::sha256_hex(&bytes);
    if sha256 != registration.component_sha256 {
        return refuse(format!(
            "the component hashes to {sha256}, the registration says {}",
            registration.component_sha256
        ));
    }
    match model.install(number, bytes).await {
        Ok(Install::Installed(v)) => {
            tracing::info!(model = %registration.model_id, version = v.number, sha256 = %v.sha256, "component version installed");
            Verdict::Report(AdapterInstall {
                model_id: registration.model_id,
                version: registration.version,
                component_sha256: v.sha256,
                installed: true,
                reason: None,
            })
        }
        Ok(Install::AlreadyCurrent(_)) => Verdict::Ignored,
        Err(reason) => refuse(reason),
    }
}
