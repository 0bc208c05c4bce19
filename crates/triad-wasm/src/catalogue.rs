//! The model catalogue with its WebAssembly models loaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use triad_config::{ModelConfig, ModelKind};
use triad_models::{Catalogue, ModelAdapter, Replaceable, Secret};

use crate::{Egress, Error, LOCAL_ADAPTER, Result, WasmHost, WasmModel};

/// [`Catalogue::from_config`] plus every `kind = "wasm"` model, loaded into `host`: its
/// `component` file (the embedded `triad-local` component when absent), its egress limited
/// to `allowed_hosts`, with `api_key_env`'s key sent as a bearer token by the host.
pub async fn load_catalogue(
    configured: &BTreeMap<String, ModelConfig>,
    env: impl Fn(&str) -> Option<String>,
    host: &WasmHost,
) -> Result<Catalogue> {
    let mut catalogue =
        Catalogue::from_config(configured, &env).map_err(|e| Error::Catalogue(e.to_string()))?;
    for (id, m) in configured.iter().filter(|(_, m)| m.kind == ModelKind::Wasm) {
        let bytes = match &m.component {
            Some(path) => std::fs::read(path).map_err(|e| Error::Component {
                model: id.clone(),
                path: path.clone(),
                reason: e.to_string(),
            })?,
            None => LOCAL_ADAPTER.to_vec(),
        };
        let credential = match &m.api_key_env {
            Some(var) => {
                let key = env(var).ok_or_else(|| {
                    Error::Catalogue(format!("model {id}: the API key variable {var} is not set"))
                })?;
                Some((
                    "authorization".to_owned(),
                    Secret::new(format!("Bearer {key}")),
                ))
            }
            None => None,
        };
        let egress = Egress::new(m.allowed_hosts.clone(), credential)?;
        let mut settings = BTreeMap::new();
        if let Some(url) = &m.base_url {
            settings.insert("base-url".to_owned(), url.clone());
        }
        settings.insert(
            "model".to_owned(),
            m.model.clone().unwrap_or_else(|| id.clone()),
        );
        let model =
            WasmModel::load_with_settings(host, id, m.zones.clone(), &bytes, egress, settings)
                .await?;
        tracing::info!(
            model = %id,
            sha256 = %model.version().sha256,
            allowed_hosts = ?m.allowed_hosts,
            "wasm model loaded"
        );
        let model = Arc::new(model);
        catalogue
            .models
            .insert(id.clone(), Arc::clone(&model) as Arc<dyn ModelAdapter>);
        catalogue
            .replaceable
            .insert(id.clone(), model as Arc<dyn Replaceable>);
    }
    Ok(catalogue)
}
